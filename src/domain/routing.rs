//! Routing rules: which routes an accepted event goes to. Pure matching; the targets and the
//! delivery machinery live outside the domain.

use super::event::{CartEvent, EventType};
use std::collections::HashSet;
use std::fmt;

/// Why a route rule cannot be built from configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteRuleError {
    #[error("route name {0:?} must be 1-64 characters of a-z A-Z 0-9 - _")]
    BadName(String),
    #[error("unknown event type {0:?}")]
    UnknownEventType(String),
}

/// A route's name: 1-64 of `a-z A-Z 0-9 - _`, used in URLs, metrics labels and logs.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RouteName(String);

impl RouteName {
    /// # Errors
    /// [`RouteRuleError::BadName`] when the name breaks the rule above.
    pub fn parse(raw: &str) -> Result<Self, RouteRuleError> {
        let ok = !raw.is_empty()
            && raw.len() <= 64
            && raw
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if ok {
            Ok(Self(raw.to_owned()))
        } else {
            Err(RouteRuleError::BadName(raw.to_owned()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RouteName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Which events a route takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteMatch {
    All,
    Types(HashSet<EventType>),
}

impl RouteMatch {
    /// From a list of event type names; an empty list or `"*"` means all.
    ///
    /// # Errors
    /// Names the first unknown event type.
    pub fn parse(types: &[String]) -> Result<Self, RouteRuleError> {
        if types.is_empty() || types.iter().any(|t| t == "*") {
            return Ok(Self::All);
        }
        types
            .iter()
            .map(|t| EventType::parse(t).ok_or_else(|| RouteRuleError::UnknownEventType(t.clone())))
            .collect::<Result<HashSet<_>, _>>()
            .map(Self::Types)
    }

    pub fn matches(&self, event: &CartEvent) -> bool {
        match self {
            Self::All => true,
            Self::Types(types) => types.contains(&event.event_type()),
        }
    }

    /// For operators: `*` or the sorted type names.
    pub fn describe(&self) -> Vec<String> {
        match self {
            Self::All => vec!["*".to_owned()],
            Self::Types(types) => {
                let mut v: Vec<String> = types.iter().map(|t| t.as_str().to_owned()).collect();
                v.sort();
                v
            }
        }
    }
}

/// A route's rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteRule {
    pub name: RouteName,
    pub matcher: RouteMatch,
}

/// The names of the routes `event` goes to, in rule order.
pub fn routes_for<'a>(rules: &'a [RouteRule], event: &CartEvent) -> Vec<&'a RouteName> {
    rules
        .iter()
        .filter(|r| r.matcher.matches(event))
        .map(|r| &r.name)
        .collect()
}

/// Which of `partitions` ordered lanes a user's events take, so one user's events stay in
/// order while different users' events are delivered in parallel. Stable across restarts
/// (FNV-1a, not the std hasher, whose seed changes per process).
pub fn partition(user_id: &str, partitions: u32) -> u32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in user_id.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (h % u64::from(partitions.max(1))) as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::fixtures::{self, rich_metadata};
    use proptest::prelude::*;

    /// An event of type `t` with every field a rule of any type might need.
    fn event(t: &str) -> CartEvent {
        fixtures::event("e-1")
            .kind(t)
            .metadata(rich_metadata())
            .cart_event()
    }

    fn rule(name: &str, types: &[&str]) -> RouteRule {
        RouteRule {
            name: RouteName::parse(name).unwrap(),
            matcher: RouteMatch::parse(&types.iter().map(|t| (*t).to_owned()).collect::<Vec<_>>())
                .unwrap(),
        }
    }

    #[test]
    fn events_go_to_every_matching_route_in_rule_order() {
        let rules = [
            rule("checkout", &["checkout_started", "checkout_completed"]),
            rule("everything", &[]),
            rule("star", &["*"]),
        ];
        let names = |t| {
            routes_for(&rules, &event(t))
                .into_iter()
                .map(|n| n.as_str().to_owned())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            names("checkout_started"),
            ["checkout", "everything", "star"]
        );
        assert_eq!(names("item_added"), ["everything", "star"]);
    }

    #[test]
    fn bad_names_and_types_are_refused() {
        assert_eq!(
            RouteName::parse(""),
            Err(RouteRuleError::BadName(String::new()))
        );
        assert!(RouteName::parse("a b").is_err());
        assert!(RouteName::parse(&"a".repeat(65)).is_err());
        assert!(RouteName::parse("web-hook_1").is_ok());
        assert_eq!(
            RouteMatch::parse(&["item_exploded".to_owned()]),
            Err(RouteRuleError::UnknownEventType("item_exploded".to_owned()))
        );
    }

    #[test]
    fn describe_lists_types_sorted() {
        assert_eq!(
            rule("r", &["item_removed", "item_added"])
                .matcher
                .describe(),
            ["item_added", "item_removed"]
        );
        assert_eq!(rule("r", &[]).matcher.describe(), ["*"]);
    }

    proptest! {
        #[test]
        fn partitions_are_stable_and_in_range(user in "\\PC{0,40}", n in 1u32..64) {
            let p = partition(&user, n);
            prop_assert!(p < n);
            prop_assert_eq!(p, partition(&user, n));
        }
    }
}
