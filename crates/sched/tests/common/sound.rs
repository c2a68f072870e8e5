//! The bookkeeping rules every story checks: the manager's own, the books against each device
//! and the host, the books against what the engine holds, and no lease broken.

use lensd_core::residency::{Place, Tier};
use lensd_sched::fake::FakeEngine;
use lensd_sched::residency::{EntryState, Lease, MemoryReport, Residency};

/// After every step: budgets hold, each device's and the host's sums equal their entries, the
/// engine holds exactly what the manager thinks it holds, and no copy a job read was freed.
pub async fn assert_sound(res: &Residency, engine: &FakeEngine) -> MemoryReport {
    use lensd_core::engine::Engine;
    let rep = res.report().await.unwrap();
    assert!(
        rep.invariant_violations.is_empty(),
        "{:?}",
        rep.invariant_violations
    );
    assert_eq!(
        engine.violations(),
        Vec::<String>::new(),
        "a lease was broken"
    );
    for t in &rep.tiers {
        assert!(
            t.used <= t.budget,
            "{:?} over budget: {} > {}",
            t.tier,
            t.used,
            t.budget
        );
    }
    for d in &rep.devices {
        let sum: u64 = rep
            .entries
            .iter()
            .filter(|e| e.tier == Tier::Device && e.device == Some(d.id))
            .map(|e| e.bytes)
            .sum();
        assert_eq!(
            sum, d.used,
            "{}: the entries on it and its use differ",
            d.name
        );
        assert!(d.used <= d.budget, "{} over budget", d.name);
    }
    let host: u64 = rep
        .entries
        .iter()
        .filter(|e| e.tier == Tier::Host)
        .map(|e| e.bytes)
        .sum();
    assert_eq!(
        host,
        rep.tier(Tier::Host).used,
        "host entries and use differ"
    );
    let held = engine.held();
    for e in &rep.entries {
        let place = match (e.tier, e.device) {
            (Tier::Disk, _) => {
                assert!(!engine.holds(&e.resource), "{} freed but held", e.resource);
                continue;
            }
            (Tier::Device, Some(d)) => Place::Device(d),
            (Tier::Device, None) => panic!("{} on the device tier names no device", e.resource),
            (Tier::Host, _) => Place::Host,
        };
        if e.state != EntryState::Ready {
            continue;
        }
        if engine.shared_memory() {
            assert!(
                engine.holds(&e.resource),
                "{} resident but not held",
                e.resource
            );
        } else {
            assert!(
                held.contains(&(e.resource.clone(), place)),
                "{} on {place} in the books but not in the engine: {held:?}",
                e.resource
            );
        }
    }
    rep
}

/// Every copy `lease` holds is where it was leased, ready, and counted as leased.
pub fn assert_leased(rep: &MemoryReport, lease: &Lease) {
    let keys = std::iter::once(lensd_core::registry::ResourceKey::Base(lease.base.clone()))
        .chain(
            lease
                .lenses
                .iter()
                .flatten()
                .cloned()
                .map(lensd_core::registry::ResourceKey::Lens),
        )
        .chain(
            lease
                .donors
                .iter()
                .flatten()
                .cloned()
                .map(lensd_core::registry::ResourceKey::Base),
        );
    for key in keys {
        let copy = rep
            .copies(&key)
            .find(|e| e.device == Some(lease.device))
            .unwrap_or_else(|| panic!("{key} leased on {} was moved away", lease.device));
        assert_eq!(copy.state, EntryState::Ready, "{key} leased but not ready");
        assert!(copy.leases > 0, "{key} leased but not counted");
    }
}
