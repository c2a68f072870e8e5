//! Which waiting request runs next, as pure functions over plain data.
//!
//! The policy, for users: each client's oldest request is a candidate, and a client whose
//! request has just started counts as having arrived at that moment, so clients take turns and
//! one client's hundred requests never hold back another client's one. Among the candidates,
//! a request that has
//! waited longer than the aging bound (default 30 s) runs first, oldest first, whatever its
//! model. Otherwise lensd prefers a request whose base model is already on the device, oldest
//! first, because it starts at once; a request that needs another base goes first only when it
//! has waited longer than the resident one by more than the measured time of switching bases,
//! so a switch is made when the waiting it saves is worth its cost. Requests for the same base
//! therefore run one after another, and two users alternating between groups do not make the
//! device swap bases on every request.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use lensd_core::registry::BaseKey;
use lensd_core::work::ClientId;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyKind {
    /// First in, first out, whatever the base: the original site's behaviour.
    Fifo,
    /// The group-aware policy described above.
    GroupAware,
}

/// A request as the policy sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waiting {
    pub client: ClientId,
    pub base: BaseKey,
    /// Monotonic milliseconds at arrival; ties keep arrival order.
    pub enqueued_ms: u64,
    /// False while it waits for something else (a generation it analyses).
    pub eligible: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct View {
    pub now_ms: u64,
    /// Bases on the device now.
    pub on_device: BTreeSet<BaseKey>,
    /// Measured time to bring a base onto the device.
    pub switch_cost_ms: u64,
    pub aging_ms: u64,
    /// When each client's latest request started: its turn counts from then.
    pub last_start: BTreeMap<ClientId, u64>,
}

/// Arrival for taking turns: no earlier than the client's latest start.
fn turn(w: &Waiting, view: &View) -> u64 {
    let last = view.last_start.get(&w.client).copied().unwrap_or(0);
    w.enqueued_ms.max(last)
}

/// What the policy needs to know of a candidate (a client's oldest eligible request).
#[derive(Debug, Clone, Copy)]
struct Candidate {
    index: usize,
    enqueued_ms: u64,
    /// Arrival for taking turns: no earlier than the client's latest start.
    turn_ms: u64,
    on_device: bool,
}

/// The group-aware choice among the candidates.
fn decide(candidates: &[Candidate], view: &View) -> Option<usize> {
    // Aging counts real waiting time, so that nothing starves.
    let overdue = candidates
        .iter()
        .filter(|c| view.now_ms.saturating_sub(c.enqueued_ms) >= view.aging_ms);
    if let Some(c) = overdue.min_by_key(|c| (c.enqueued_ms, c.index)) {
        return Some(c.index);
    }
    let first_turn = |on: bool| {
        candidates
            .iter()
            .filter(|c| c.on_device == on)
            .min_by_key(|c| (c.turn_ms, c.index))
    };
    match (first_turn(true), first_turn(false)) {
        (Some(r), Some(o)) => {
            let gap = r.turn_ms.saturating_sub(o.turn_ms);
            Some(if gap > view.switch_cost_ms { o } else { r }.index)
        }
        (r, o) => r.or(o).map(|c| c.index),
    }
}

/// Index of the request to run next, or `None` if none is eligible.
pub fn pick(kind: PolicyKind, waiting: &[Waiting], view: &View) -> Option<usize> {
    let eligible = (0..waiting.len()).filter(|&i| waiting[i].eligible);
    match kind {
        PolicyKind::Fifo => eligible.min_by_key(|&i| (waiting[i].enqueued_ms, i)),
        PolicyKind::GroupAware => {
            // Each client's oldest eligible request.
            let mut oldest: HashMap<&ClientId, usize> = HashMap::new();
            for i in eligible {
                let c = oldest.entry(&waiting[i].client).or_insert(i);
                if (waiting[i].enqueued_ms, i) < (waiting[*c].enqueued_ms, *c) {
                    *c = i;
                }
            }
            let candidates: Vec<Candidate> = oldest
                .into_values()
                .map(|i| Candidate {
                    index: i,
                    enqueued_ms: waiting[i].enqueued_ms,
                    turn_ms: turn(&waiting[i], view),
                    on_device: view.on_device.contains(&waiting[i].base),
                })
                .collect();
            decide(&candidates, view)
        }
    }
}

/// The order in which the waiting requests would run if nothing else arrived and the clock
/// stood still: after each pick, the picked request's base is the one on the device and its
/// client's turn starts now. This is what queue positions report. It is recomputed on every
/// change to the queue, so it works on each client's requests in arrival order and on numbered
/// bases, making it O(requests × clients) without hashing or string comparisons per step.
pub fn order(kind: PolicyKind, waiting: &[Waiting], view: &View) -> Vec<usize> {
    let mut eligible: Vec<usize> = (0..waiting.len())
        .filter(|&i| waiting[i].eligible)
        .collect();
    eligible.sort_by_key(|&i| (waiting[i].enqueued_ms, i));
    if kind == PolicyKind::Fifo {
        return eligible;
    }
    // Each client's eligible requests, oldest first, and each request's base as a number.
    let mut clients: HashMap<&ClientId, usize> = HashMap::new();
    let mut queues: Vec<VecDeque<usize>> = Vec::new();
    let mut bases: HashMap<&BaseKey, usize> = HashMap::new();
    let mut base_of = vec![0; waiting.len()];
    for &i in &eligible {
        let c = *clients.entry(&waiting[i].client).or_insert_with(|| {
            queues.push(VecDeque::new());
            queues.len() - 1
        });
        queues[c].push_back(i);
        let n = bases.len();
        base_of[i] = *bases.entry(&waiting[i].base).or_insert(n);
    }
    let mut last_start: Vec<u64> = vec![0; queues.len()];
    for (client, &c) in &clients {
        last_start[c] = view.last_start.get(*client).copied().unwrap_or(0);
    }
    let mut on_device: Vec<bool> = vec![false; bases.len()];
    for (base, &b) in &bases {
        on_device[b] = view.on_device.contains(*base);
    }
    let mut out = Vec::with_capacity(eligible.len());
    let mut candidates: Vec<(usize, Candidate)> = Vec::with_capacity(queues.len());
    loop {
        candidates.clear();
        for (c, q) in queues.iter().enumerate() {
            if let Some(&i) = q.front() {
                let enqueued_ms = waiting[i].enqueued_ms;
                candidates.push((
                    c,
                    Candidate {
                        index: i,
                        enqueued_ms,
                        turn_ms: enqueued_ms.max(last_start[c]),
                        on_device: on_device[base_of[i]],
                    },
                ));
            }
        }
        let plain: Vec<Candidate> = candidates.iter().map(|(_, c)| *c).collect();
        let Some(i) = decide(&plain, view) else {
            break;
        };
        let c = candidates
            .iter()
            .find(|(_, cand)| cand.index == i)
            .map(|(c, _)| *c)
            .expect("the choice is a candidate");
        queues[c].pop_front();
        last_start[c] = view.now_ms;
        on_device.iter_mut().for_each(|b| *b = false);
        on_device[base_of[i]] = true;
        out.push(i);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(client: &str, base: &str, at: u64) -> Waiting {
        Waiting {
            client: ClientId(client.into()),
            base: BaseKey(base.into()),
            enqueued_ms: at,
            eligible: true,
        }
    }

    fn view(now: u64, on: &[&str], switch: u64) -> View {
        View {
            now_ms: now,
            on_device: on.iter().map(|b| BaseKey(b.to_string())).collect(),
            switch_cost_ms: switch,
            aging_ms: 30_000,
            last_start: BTreeMap::new(),
        }
    }

    /// (queue, bases on the device, switch cost, now, expected pick, why)
    type Case = (
        Vec<Waiting>,
        &'static [&'static str],
        u64,
        u64,
        Option<usize>,
        &'static str,
    );

    #[test]
    fn the_policy_in_a_table() {
        let cases: Vec<Case> = vec![
            (vec![], &["A"], 100, 0, None, "nothing waits"),
            (
                vec![w("x", "B", 0), w("y", "A", 10)],
                &["A"],
                1_000,
                500,
                Some(1),
                "resident base first",
            ),
            (
                vec![w("x", "B", 0), w("y", "A", 5_000)],
                &["A"],
                1_000,
                6_000,
                Some(0),
                "waited longer than a switch costs",
            ),
            (
                vec![w("x", "B", 0), w("y", "A", 900)],
                &["A"],
                1_000,
                1_000,
                Some(1),
                "gap 900 ms under a 1 s switch",
            ),
            (
                vec![w("x", "B", 0), w("y", "A", 20_000)],
                &["A"],
                60_000,
                31_000,
                Some(0),
                "aging beats any switch cost",
            ),
            (
                vec![w("x", "A", 0), w("x", "A", 1), w("y", "B", 2)],
                &["B"],
                10,
                3,
                Some(2),
                "resident",
            ),
            (
                vec![w("x", "A", 0), w("x", "A", 1), w("y", "A", 2)],
                &["A"],
                10,
                3,
                Some(0),
                "oldest of the resident",
            ),
            (
                vec![w("x", "B", 0), w("y", "C", 1)],
                &["A"],
                10,
                5,
                Some(0),
                "nothing resident: oldest",
            ),
        ];
        for (queue, on, switch, now, want, why) in cases {
            assert_eq!(
                pick(PolicyKind::GroupAware, &queue, &view(now, on, switch)),
                want,
                "{why}"
            );
        }
    }

    #[test]
    fn one_clients_backlog_does_not_hold_back_another() {
        // Client x queued 100 requests for the resident base; y's single request for the same
        // base comes right after x's first, not after all of them.
        let mut q: Vec<Waiting> = (0..100).map(|i| w("x", "A", i)).collect();
        q.push(w("y", "A", 100));
        let o = order(PolicyKind::GroupAware, &q, &view(200, &["A"], 50));
        let y = o.iter().position(|&i| i == 100).unwrap();
        assert_eq!(y, 1, "y runs second");
        let fifo = order(PolicyKind::Fifo, &q, &view(200, &["A"], 50));
        assert_eq!(
            fifo.iter().position(|&i| i == 100).unwrap(),
            100,
            "FIFO makes y wait for all"
        );
    }

    #[test]
    fn requests_waiting_on_something_else_are_skipped() {
        let mut q = vec![w("x", "A", 0), w("y", "A", 1)];
        q[0].eligible = false;
        assert_eq!(
            pick(PolicyKind::GroupAware, &q, &view(5, &["A"], 0)),
            Some(1)
        );
        assert_eq!(pick(PolicyKind::Fifo, &q, &view(5, &["A"], 0)), Some(1));
        q[1].eligible = false;
        assert_eq!(pick(PolicyKind::GroupAware, &q, &view(5, &["A"], 0)), None);
    }

    #[test]
    fn the_predicted_order_groups_requests_by_base() {
        // Two clients alternate between two bases; A is on the device.
        let q = vec![
            w("x", "A", 0),
            w("y", "B", 1),
            w("x", "A", 2),
            w("y", "B", 3),
        ];
        let o = order(PolicyKind::GroupAware, &q, &view(10, &["A"], 1_000));
        assert_eq!(o, [0, 2, 1, 3], "A, A, then B, B: one switch");
        assert_eq!(
            order(PolicyKind::Fifo, &q, &view(10, &["A"], 1_000)),
            [0, 1, 2, 3],
            "FIFO: three switches"
        );
    }

    fn first_turn(
        ids: impl Iterator<Item = usize>,
        waiting: &[Waiting],
        view: &View,
    ) -> Option<usize> {
        ids.min_by_key(|&i| (turn(&waiting[i], view), i))
    }

    /// The group-aware pick as first written: candidates found by scanning a list.
    fn pick_by_scan(waiting: &[Waiting], view: &View) -> Option<usize> {
        let mut candidates: Vec<usize> = Vec::new();
        for i in (0..waiting.len()).filter(|&i| waiting[i].eligible) {
            match candidates
                .iter_mut()
                .find(|c| waiting[**c].client == waiting[i].client)
            {
                Some(c) if (waiting[i].enqueued_ms, i) < (waiting[*c].enqueued_ms, *c) => *c = i,
                Some(_) => {}
                None => candidates.push(i),
            }
        }
        let overdue = candidates
            .iter()
            .copied()
            .filter(|&i| view.now_ms.saturating_sub(waiting[i].enqueued_ms) >= view.aging_ms);
        if let Some(i) = overdue.min_by_key(|&i| (waiting[i].enqueued_ms, i)) {
            return Some(i);
        }
        let on = |i: &usize| view.on_device.contains(&waiting[*i].base);
        let resident = first_turn(candidates.iter().copied().filter(on), waiting, view);
        let other = first_turn(candidates.iter().copied().filter(|i| !on(i)), waiting, view);
        match (resident, other) {
            (Some(r), Some(o)) => {
                let gap = turn(&waiting[r], view).saturating_sub(turn(&waiting[o], view));
                Some(if gap > view.switch_cost_ms { o } else { r })
            }
            (r, o) => r.or(o),
        }
    }

    /// `order` as first written: pick from a copy of the rest, over and over.
    fn order_by_copies(kind: PolicyKind, waiting: &[Waiting], view: &View) -> Vec<usize> {
        let mut rest: Vec<usize> = (0..waiting.len()).collect();
        let mut view = view.clone();
        let mut out = Vec::new();
        loop {
            let sub: Vec<Waiting> = rest.iter().map(|&i| waiting[i].clone()).collect();
            let k = match kind {
                PolicyKind::Fifo => pick(kind, &sub, &view),
                PolicyKind::GroupAware => pick_by_scan(&sub, &view),
            };
            let Some(k) = k else {
                break;
            };
            let i = rest.remove(k);
            view.on_device = BTreeSet::from([waiting[i].base.clone()]);
            view.last_start
                .insert(waiting[i].client.clone(), view.now_ms);
            out.push(i);
        }
        out
    }

    #[test]
    fn ordering_a_long_queue_in_place_equals_picking_from_copies() {
        // A fixed pseudo-random queue: clients with several requests, three bases, ties in
        // arrival time, some requests not yet eligible, some past the aging bound.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        for round in 0..20 {
            let waiting: Vec<Waiting> = (0..60)
                .map(|_| Waiting {
                    client: ClientId(format!("c{}", next(12))),
                    base: BaseKey(format!("b{}", next(3))),
                    enqueued_ms: next(40) * 1_000,
                    eligible: next(8) != 0,
                })
                .collect();
            let mut v = view(45_000, &["b0"], 2_000 + round * 500);
            v.last_start.insert(ClientId("c3".into()), 20_000);
            for kind in [PolicyKind::Fifo, PolicyKind::GroupAware] {
                let fast = order(kind, &waiting, &v);
                assert_eq!(fast, order_by_copies(kind, &waiting, &v), "round {round}");
                assert_eq!(fast.len(), waiting.iter().filter(|w| w.eligible).count());
            }
        }
    }
}
