use super::*;
use crate::app::disk::DiskGauges;
use crate::ports::{
    DiskSpace, MockEventStore, MockJournal, MockOutbox, MockQuarantine, MockRetention, Space,
};

/// A disk with no space left, which stays so: only writes clear the state.
struct NoneFree;

impl DiskSpace for NoneFree {
    fn space(&self) -> std::io::Result<Space> {
        Ok(Space {
            free: 0,
            total: 100 << 20,
        })
    }
}

fn full_disk() -> Arc<DiskState> {
    Arc::new(DiskState::new(
        "/data".into(),
        Box::new(NoneFree),
        10,
        DiskGauges::default(),
    ))
}

fn full() -> PortError {
    PortError::NoSpace("local database: database or disk is full".into())
}

fn is_full(disk: &DiskState) -> bool {
    disk.report().full.is_some()
}

#[tokio::test]
async fn the_outbox_marks_a_full_disk_and_an_enqueue_that_succeeds_clears_it() {
    let mut fake = MockOutbox::new();
    let mut enqueues = vec![Err(full()), Ok(())].into_iter();
    fake.expect_enqueue()
        .times(2)
        .returning(move |_, _, _| enqueues.next().unwrap());
    let mut deletes = vec![Err(full()), Ok(())].into_iter();
    fake.expect_delivered()
        .times(2)
        .returning(move |_| deletes.next().unwrap());
    let disk = full_disk();
    let outbox = DiskWatched::new(Arc::new(fake) as Arc<dyn Outbox>, Arc::clone(&disk));

    assert!(outbox.enqueue("journal", &[], 1).await.is_err());
    assert!(is_full(&disk), "a full disk while enqueueing");
    assert!(outbox.enqueue("journal", &[], 1).await.is_ok());
    assert!(!is_full(&disk), "an enqueue that succeeds clears it");

    assert!(outbox.delivered(&[1]).await.is_err());
    assert!(is_full(&disk), "a full disk while deleting delivered rows");
    outbox.delivered(&[1]).await.unwrap();
    assert!(is_full(&disk), "a delete that succeeds proves nothing");

    // Other failures are not the disk's.
    let fresh = full_disk();
    let mut other = MockOutbox::new();
    other
        .expect_retry_later()
        .returning(|_, _, _| Err(PortError::Unavailable("locked".into())));
    let watched = DiskWatched::new(Arc::new(other) as Arc<dyn Outbox>, Arc::clone(&fresh));
    assert!(watched.retry_later(&[1], Utc::now(), "x").await.is_err());
    assert!(!is_full(&fresh));
}

#[tokio::test]
async fn the_forwarders_removal_and_store_insert_mark_a_full_disk() {
    let mut journal = MockJournal::new();
    journal
        .expect_remove_through()
        .times(1)
        .returning(|_| Err(full()));
    let disk = full_disk();
    let journal = DiskWatched::new(Arc::new(journal) as Arc<dyn Journal>, Arc::clone(&disk));
    assert!(journal.remove_through(7).await.is_err());
    assert!(is_full(&disk), "removing forwarded journal entries");

    let mut store = MockEventStore::new();
    let mut inserts = vec![Err(full()), Ok(())].into_iter();
    store
        .expect_insert()
        .times(2)
        .returning(move |_| inserts.next().unwrap());
    let disk = full_disk();
    let store = DiskWatched::new(Arc::new(store) as Arc<dyn EventStore>, Arc::clone(&disk));
    assert!(store.insert(&[]).await.is_err());
    assert!(
        is_full(&disk),
        "a forwarded batch the embedded store cannot take"
    );
    store.insert(&[]).await.unwrap();
    assert!(
        is_full(&disk),
        "an insert into a store that may be remote does not clear it"
    );
}

#[tokio::test]
async fn the_forwarders_quarantine_marks_a_full_disk_and_a_put_that_succeeds_clears_it() {
    let mut fake = MockQuarantine::new();
    let mut puts = vec![Err(full()), Ok(())].into_iter();
    fake.expect_put()
        .times(2)
        .returning(move |_| puts.next().unwrap());
    let disk = full_disk();
    let quarantine = DiskWatched::new(Arc::new(fake) as Arc<dyn Quarantine>, Arc::clone(&disk));
    assert!(quarantine.put(&[]).await.is_err());
    assert!(is_full(&disk), "a full disk while setting events aside");
    quarantine.put(&[]).await.unwrap();
    assert!(!is_full(&disk));
}

#[tokio::test]
async fn a_retention_step_that_fails_for_lack_of_space_marks_a_full_disk() {
    let mut fake = MockRetention::new();
    let mut steps = vec![
        Err(PortError::Unavailable("database is locked".into())),
        Err(full()),
        Ok(ExpireStep::default()),
    ]
    .into_iter();
    fake.expect_expire_step()
        .times(3)
        .returning(move |_| steps.next().unwrap());
    let disk = full_disk();
    let retention = DiskWatched::new(Arc::new(fake) as Arc<dyn Retention>, Arc::clone(&disk));
    let expiry = Expiry {
        occurred_before: Utc::now(),
        received_before: Utc::now(),
    };

    assert!(retention.expire_step(expiry).await.is_err());
    assert!(!is_full(&disk), "other failures are not the disk's");
    let err = retention.expire_step(expiry).await.unwrap_err();
    assert!(
        matches!(err, PortError::NoSpace(_)),
        "the error goes on as it was"
    );
    let report = disk.report();
    assert_eq!(
        report.full.as_deref(),
        Some("local database: database or disk is full"),
        "/ready says why"
    );
    retention.expire_step(expiry).await.unwrap();
    assert!(is_full(&disk), "a delete that succeeds proves nothing");
}

/// A disk whose free space the test sets.
struct Settable(Arc<std::sync::atomic::AtomicU64>);

impl DiskSpace for Settable {
    fn space(&self) -> std::io::Result<Space> {
        Ok(Space {
            free: self.0.load(std::sync::atomic::Ordering::SeqCst),
            total: 100 << 20,
        })
    }
}

#[tokio::test]
async fn space_retention_gives_back_clears_what_its_failure_marked() {
    let free = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let disk = Arc::new(DiskState::new(
        "/data".into(),
        Box::new(Settable(Arc::clone(&free))),
        10,
        DiskGauges::default(),
    ));
    let mut fake = MockRetention::new();
    let mut steps = vec![Err(full()), Ok(ExpireStep::default())].into_iter();
    fake.expect_expire_step()
        .times(2)
        .returning(move |_| steps.next().unwrap());
    let retention = DiskWatched::new(Arc::new(fake) as Arc<dyn Retention>, Arc::clone(&disk));
    let expiry = Expiry {
        occurred_before: Utc::now(),
        received_before: Utc::now(),
    };
    assert!(retention.expire_step(expiry).await.is_err());
    assert!(is_full(&disk));
    // The next step deletes and vacuums: 2 MiB given back, past the 1 MiB margin of this disk.
    retention.expire_step(expiry).await.unwrap();
    free.store(2 << 20, std::sync::atomic::Ordering::SeqCst);
    assert!(!is_full(&disk), "the space given back clears it");
}
