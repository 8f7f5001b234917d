use super::*;

const MIB: u64 = 1 << 20;

fn space(free: u64) -> Space {
    Space {
        free,
        total: 100 * MIB,
    }
}

#[test]
fn crossing_the_warning_threshold_is_one_change_each_way() {
    let mut m = Machine::new(10);
    assert_eq!(m.sampled(space(50 * MIB)), vec![]);
    assert_eq!(m.sampled(space(9 * MIB)), vec![Change::Low(space(9 * MIB))]);
    // Staying below is no news.
    assert_eq!(m.sampled(space(8 * MIB)), vec![]);
    assert_eq!(m.sampled(space(2 * MIB)), vec![]);
    assert!(m.is_low());
    assert_eq!(
        m.sampled(space(10 * MIB)),
        vec![Change::NoLongerLow(space(10 * MIB))]
    );
    assert_eq!(m.sampled(space(30 * MIB)), vec![]);
    assert!(!m.is_low());
}

#[test]
fn a_start_below_the_threshold_warns_once() {
    let mut m = Machine::new(10);
    assert_eq!(m.sampled(space(MIB)), vec![Change::Low(space(MIB))]);
    assert_eq!(m.sampled(space(MIB)), vec![]);
}

#[test]
fn a_zero_threshold_never_warns() {
    let mut m = Machine::new(0);
    assert_eq!(m.sampled(space(0)), vec![]);
}

#[test]
fn full_is_one_change_until_a_write_succeeds() {
    let mut m = Machine::new(10);
    assert_eq!(
        m.write_failed("disk full", Some(0)),
        Some(Change::Full("disk full".into()))
    );
    // Every further failing group is the same state: no news.
    assert_eq!(m.write_failed("disk full again", Some(0)), None);
    assert_eq!(m.full_cause(), Some("disk full"));
    assert_eq!(m.write_succeeded(), Some(Change::WritesSucceed));
    assert_eq!(m.full_cause(), None);
    assert_eq!(m.write_succeeded(), None);
    // And it can fill up again.
    assert!(m.write_failed("x", None).is_some());
}

#[test]
fn full_clears_once_space_is_freed_past_the_margin() {
    let mut m = Machine::new(0);
    m.write_failed("disk full", Some(200 * 1024));
    // Some bytes freed, less than the margin (1 MiB here): still full.
    assert_eq!(m.sampled(space(900 * 1024)), vec![]);
    assert!(m.full_cause().is_some());
    let freed = space(200 * 1024 + MIB);
    assert_eq!(m.sampled(freed), vec![Change::SpaceFreed(freed)]);
    assert!(m.full_cause().is_none());
}

#[test]
fn full_without_a_known_free_space_clears_only_on_a_write() {
    let mut m = Machine::new(0);
    m.write_failed("disk full", None);
    assert_eq!(m.sampled(space(99 * MIB)), vec![]);
    assert_eq!(m.write_succeeded(), Some(Change::WritesSucceed));
}

#[test]
fn the_margin_grows_with_the_disk_within_bounds() {
    assert_eq!(margin(10 * MIB), MIB);
    assert_eq!(margin(1000 * MIB), 10 * MIB);
    assert_eq!(margin(1 << 40), 64 * MIB);
}

/// A file system whose free space the test sets.
struct FakeDisk(Arc<Mutex<std::io::Result<Space>>>);

impl DiskSpace for FakeDisk {
    fn space(&self) -> std::io::Result<Space> {
        match &*self.0.lock().unwrap() {
            Ok(s) => Ok(*s),
            Err(e) => Err(std::io::Error::new(e.kind(), e.to_string())),
        }
    }
}

fn state(free: u64) -> (DiskState, Arc<Mutex<std::io::Result<Space>>>, DiskGauges) {
    let now = Arc::new(Mutex::new(Ok(space(free))));
    let gauges = DiskGauges::default();
    let disk = DiskState::new(
        "/data".into(),
        Box::new(FakeDisk(Arc::clone(&now))),
        10,
        gauges.clone(),
    );
    (disk, now, gauges)
}

#[test]
fn samples_set_the_gauges() {
    let (disk, now, gauges) = state(40 * MIB);
    disk.sample();
    assert_eq!(gauges.free_bytes.get(), i64::try_from(40 * MIB).unwrap());
    assert_eq!(gauges.total_bytes.get(), i64::try_from(100 * MIB).unwrap());
    *now.lock().unwrap() = Err(std::io::Error::other("gone"));
    // A failed sample keeps the last values.
    disk.sample();
    assert_eq!(gauges.free_bytes.get(), i64::try_from(40 * MIB).unwrap());
    assert!(!disk.report().low);
}

#[test]
fn the_report_shows_full_until_writes_succeed() {
    let (disk, _now, gauges) = state(0);
    disk.write_succeeded();
    assert!(disk.report().full.is_none());
    disk.write_failed("local database: database or disk is full");
    let report = disk.report();
    assert_eq!(
        report.full.as_deref(),
        Some("local database: database or disk is full")
    );
    assert_eq!(report.data_dir, PathBuf::from("/data"));
    assert!(report.low, "0 bytes free is below 10%");
    assert_eq!(gauges.full.get(), 1);
    disk.write_succeeded();
    assert!(disk.report().full.is_none());
    assert_eq!(gauges.full.get(), 0);
}

#[test]
fn the_report_clears_full_by_itself_once_space_is_freed() {
    let (disk, now, _gauges) = state(0);
    disk.write_failed("disk full");
    assert!(disk.report().full.is_some());
    *now.lock().unwrap() = Ok(space(20 * MIB));
    // No write and no sampler tick: asking is enough.
    assert!(disk.report().full.is_none());
}
