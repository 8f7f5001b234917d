use super::*;
use proptest::prelude::*;

fn id(s: &str) -> EventId {
    EventId::parse(s).unwrap()
}

/// Events with these ids; `None` stands for a generated id, which has no dedup key.
fn group(ids: &[Option<&str>]) -> (GroupPlan, Vec<EventId>) {
    let mut generated = 0;
    let ids: Vec<(EventId, bool)> = ids
        .iter()
        .map(|s| match s {
            Some(s) => (id(s), true),
            None => {
                generated += 1;
                (id(&format!("generated-{generated}")), false)
            }
        })
        .collect();
    let plan = GroupPlan::new(ids.iter().map(|(id, keyed)| keyed.then(|| id.into())));
    (plan, ids.into_iter().map(|(id, _)| id).collect())
}

fn strs(keys: &[DedupKey]) -> Vec<&str> {
    keys.iter().map(DedupKey::as_str).collect()
}

#[test]
fn each_key_is_asked_once_in_order_of_first_appearance() {
    let (plan, _) = group(&[Some("a"), None, Some("b"), Some("a"), Some("c"), Some("b")]);
    assert_eq!(strs(plan.keys()), ["a", "b", "c"]);
}

#[test]
fn repeats_answer_duplicate_of_their_first_and_only_the_first_is_stored() {
    let (mut plan, ids) = group(&[Some("a"), Some("a"), Some("b"), Some("a")]);
    plan.apply_claims(&[Claim::New, Claim::New]).unwrap();
    assert_eq!(
        plan.stores().collect::<Vec<_>>(),
        [true, false, true, false]
    );
    assert_eq!(strs(plan.claimed()), ["a", "b"]);
    assert_eq!(
        plan.resolve(ids, None),
        [
            Outcome::Accepted(id("a")),
            Outcome::Duplicate(id("a")),
            Outcome::Accepted(id("b")),
            Outcome::Duplicate(id("a")),
        ]
    );
}

#[test]
fn a_store_failure_answers_the_stored_events_and_their_repeats() {
    let (mut plan, ids) = group(&[Some("a"), Some("b"), Some("a"), None]);
    plan.apply_claims(&[Claim::New, Claim::Duplicate]).unwrap();
    let down = Outcome::Unavailable(Unavailable::JournalFull);
    assert_eq!(
        plan.resolve(ids, Some(Unavailable::JournalFull)),
        [
            down.clone(),
            Outcome::Duplicate(id("b")),
            down.clone(),
            down
        ]
    );
}

#[test]
fn a_key_in_flight_is_a_duplicate_once_settled_here_else_it_is_claimed_again() {
    let (mut plan, ids) = group(&[Some("a"), Some("b"), Some("c"), Some("d"), Some("e")]);
    plan.apply_claims(&[
        Claim::New,
        Claim::InFlight,
        Claim::InFlight,
        Claim::InFlight,
        Claim::InFlight,
    ])
    .unwrap();
    assert_eq!(strs(plan.keys()), ["b", "c", "d", "e"]);
    assert_eq!(
        plan.stores().collect::<Vec<_>>(),
        [true, false, false, false, false]
    );
    plan.apply_settled(|k| k.as_str() == "c");
    assert_eq!(strs(plan.keys()), ["b", "d", "e"]);
    plan.apply_reclaims(Some(&[Claim::New, Claim::Duplicate, Claim::InFlight]));
    assert!(plan.keys().is_empty());
    assert_eq!(strs(plan.claimed()), ["a", "b"]);
    assert_eq!(
        plan.resolve(ids, None),
        [
            Outcome::Accepted(id("a")),
            Outcome::Accepted(id("b")),
            Outcome::Duplicate(id("c")),
            Outcome::Duplicate(id("d")),
            Outcome::Unavailable(Unavailable::KeyInFlight),
        ]
    );
}

#[test]
fn no_second_answer_leaves_the_keys_in_flight() {
    for answers in [None, Some(&[Claim::New, Claim::New][..])] {
        let (mut plan, ids) = group(&[Some("a")]);
        plan.apply_claims(&[Claim::InFlight]).unwrap();
        plan.apply_settled(|_| false);
        plan.apply_reclaims(answers);
        assert!(plan.claimed().is_empty());
        assert_eq!(
            plan.resolve(ids, None),
            [Outcome::Unavailable(Unavailable::KeyInFlight)]
        );
    }
}

#[test]
fn answers_of_the_wrong_length_are_refused() {
    let (mut plan, _) = group(&[Some("a"), Some("b")]);
    assert_eq!(plan.apply_claims(&[Claim::New]), Err(WrongLength));
    assert_eq!(plan.apply_known(&[true, false, true]), Err(WrongLength));
    assert_eq!(strs(plan.keys()), ["a", "b"], "nothing was applied");
    assert!(plan.claimed().is_empty());
}

#[test]
fn the_fallback_read_decides_duplicates_and_claims_nothing() {
    let (mut plan, ids) = group(&[Some("old"), Some("new"), Some("old")]);
    plan.apply_known(&[true, false]).unwrap();
    assert!(plan.keys().is_empty());
    assert!(plan.claimed().is_empty());
    assert_eq!(
        plan.resolve(ids, None),
        [
            Outcome::Duplicate(id("old")),
            Outcome::Accepted(id("new")),
            Outcome::Duplicate(id("old")),
        ]
    );
}

/// The stores' answers for one run, by key number (keys are `k0` to `k3`).
#[derive(Debug, Clone)]
struct Answers {
    /// `None`: the dedup store is down and the event store's read decides.
    claims: Option<[Claim; 4]>,
    known: [bool; 4],
    recorded_here: [bool; 4],
    /// `None`: the second claim failed.
    reclaims: Option<[Claim; 4]>,
    store_failure: Option<Unavailable>,
}

fn arb_claim() -> impl Strategy<Value = Claim> {
    prop_oneof![
        Just(Claim::New),
        Just(Claim::Duplicate),
        Just(Claim::InFlight)
    ]
}

fn arb_unavailable() -> impl Strategy<Value = Unavailable> {
    prop_oneof![
        Just(Unavailable::StoreDown),
        Just(Unavailable::JournalFull),
        Just(Unavailable::ShuttingDown),
    ]
}

fn arb_answers() -> impl Strategy<Value = Answers> {
    (
        proptest::option::weighted(0.8, prop::array::uniform4(arb_claim())),
        prop::array::uniform4(any::<bool>()),
        prop::array::uniform4(any::<bool>()),
        proptest::option::weighted(0.8, prop::array::uniform4(arb_claim())),
        proptest::option::of(arb_unavailable()),
    )
        .prop_map(
            |(claims, known, recorded_here, reclaims, store_failure)| Answers {
                claims,
                known,
                recorded_here,
                reclaims,
                store_failure,
            },
        )
}

fn key_no(k: &DedupKey) -> usize {
    k.as_str()[1..].parse().unwrap()
}

/// What a run of the plan showed, keys given by number.
struct Run {
    asked: Vec<usize>,
    asked_again: Vec<usize>,
    stores: Vec<bool>,
    claimed: Vec<usize>,
    outcomes: Vec<Outcome>,
}

/// What the committer does with a plan, by the answers given.
fn drive(keys: &[Option<u8>], a: &Answers) -> Run {
    let ids: Vec<EventId> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| match k {
            Some(k) => id(&format!("k{k}")),
            None => id(&format!("generated-{i}")),
        })
        .collect();
    let mut plan = GroupPlan::new(
        keys.iter()
            .zip(&ids)
            .map(|(k, id)| k.map(|_| DedupKey::from(id))),
    );
    let asked: Vec<usize> = plan.keys().iter().map(key_no).collect();
    let mut asked_again = Vec::new();
    if let Some(claims) = a.claims {
        let answers: Vec<Claim> = plan.keys().iter().map(|k| claims[key_no(k)]).collect();
        plan.apply_claims(&answers).unwrap();
        plan.apply_settled(|k| a.recorded_here[key_no(k)]);
        asked_again = plan.keys().iter().map(key_no).collect();
        let answers: Option<Vec<Claim>> = a
            .reclaims
            .map(|r| plan.keys().iter().map(|k| r[key_no(k)]).collect());
        plan.apply_reclaims(answers.as_deref());
    } else {
        let known: Vec<bool> = plan.keys().iter().map(|k| a.known[key_no(k)]).collect();
        plan.apply_known(&known).unwrap();
    }
    let stores: Vec<bool> = plan.stores().collect();
    let store_failure = stores.contains(&true).then_some(a.store_failure).flatten();
    let claimed = plan.claimed().iter().map(key_no).collect();
    let outcomes = plan.resolve(ids, store_failure);
    Run {
        asked,
        asked_again,
        stores,
        claimed,
        outcomes,
    }
}

/// What the first event of key `k` answers, by the rules of the dedup contract.
fn expected_first(k: usize, a: &Answers) -> (bool, Option<Outcome>) {
    let id = || id(&format!("k{k}"));
    let stored = |a: &Answers| match a.store_failure {
        None => Outcome::Accepted(id()),
        Some(reason) => Outcome::Unavailable(reason),
    };
    let claim = match a.claims {
        None if a.known[k] => return (false, Some(Outcome::Duplicate(id()))),
        None => return (true, Some(stored(a))),
        Some(claims) => claims[k],
    };
    let claim = match claim {
        Claim::InFlight if a.recorded_here[k] => Claim::Duplicate,
        Claim::InFlight => a.reclaims.map_or(Claim::InFlight, |r| r[k]),
        other => other,
    };
    match claim {
        Claim::New => (true, Some(stored(a))),
        Claim::Duplicate => (false, Some(Outcome::Duplicate(id()))),
        Claim::InFlight => (false, Some(Outcome::Unavailable(Unavailable::KeyInFlight))),
    }
}

proptest! {
    #[test]
    fn every_event_gets_one_outcome_as_the_dedup_rules_say(
        keys in prop::collection::vec(proptest::option::weighted(0.8, 0u8..4), 0..12),
        a in arb_answers(),
    ) {
        let Run { asked, asked_again, stores, claimed, outcomes } = drive(&keys, &a);
        prop_assert_eq!(outcomes.len(), keys.len());
        prop_assert_eq!(stores.len(), keys.len());

        // Each key is asked once, in order of first appearance.
        let mut firsts: Vec<usize> = Vec::new();
        for k in keys.iter().flatten() {
            if !firsts.contains(&usize::from(*k)) {
                firsts.push(usize::from(*k));
            }
        }
        prop_assert_eq!(&asked, &firsts);

        let mut first_at: [Option<usize>; 4] = [None; 4];
        for (i, key) in keys.iter().enumerate() {
            let outcome = &outcomes[i];
            let Some(k) = key.map(usize::from) else {
                // No key: always stored, accepted unless the store failed.
                prop_assert!(stores[i]);
                let expected = a.store_failure.map_or_else(
                    || Outcome::Accepted(id(&format!("generated-{i}"))),
                    Outcome::Unavailable,
                );
                prop_assert_eq!(outcome, &expected);
                continue;
            };
            match first_at[k] {
                Some(first) => {
                    // A repeat is never stored and mirrors its first.
                    prop_assert!(!stores[i]);
                    let mirrored = match &outcomes[first] {
                        Outcome::Accepted(id) | Outcome::Duplicate(id) => Outcome::Duplicate(id.clone()),
                        other => other.clone(),
                    };
                    prop_assert_eq!(outcome, &mirrored);
                }
                None => {
                    first_at[k] = Some(i);
                    let (store, expected) = expected_first(k, &a);
                    prop_assert_eq!(stores[i], store, "event {} key k{}", i, k);
                    prop_assert_eq!(Some(outcome), expected.as_ref());
                    // Only keys claimed new are held for the group, and only their events
                    // are stored; a duplicate claim never stores.
                    prop_assert_eq!(claimed.contains(&k), store && a.claims.is_some());
                }
            }
        }
        // Every claimed key is claimed once; only keys found in flight are asked again.
        let mut distinct = claimed.clone();
        distinct.sort_unstable();
        distinct.dedup();
        prop_assert_eq!(distinct.len(), claimed.len());
        for k in &asked_again {
            prop_assert!(a.claims.is_some_and(|c| c[*k] == Claim::InFlight) && !a.recorded_here[*k]);
        }
    }
}
