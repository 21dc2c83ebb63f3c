//! Distribution and health tests of the balancer, per algorithm.

use std::{net::SocketAddr, rc::Rc, sync::Arc, time::Duration};

use crate::*;

fn addr(i: usize) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9000 + i as u16))
}

fn servers(weights: &[u32]) -> Vec<ServerSpec> {
    weights
        .iter()
        .enumerate()
        .map(|(i, &weight)| ServerSpec {
            host: None,
            weight,
            ..ServerSpec::new(addr(i))
        })
        .collect()
}

fn balancer(group: UpstreamGroup) -> Rc<Balancer> {
    Rc::new(Balancer::new(Arc::new(group), 0))
}

fn pick(b: &Rc<Balancer>) -> PeerId {
    b.pick(0, &Tried::default(), 0).expect("a server").peer()
}

/// Picks (each finished at once) counted per server.
fn counts(b: &Rc<Balancer>, picks: usize) -> Vec<usize> {
    let mut counts = vec![0; b.group().len()];
    for _ in 0..picks {
        counts[pick(b)] += 1;
    }
    counts
}

fn consistent() -> Algorithm {
    Algorithm::ConsistentHash {
        key: HashKey::ClientIp,
        balance_factor: 0.25,
    }
}

#[test]
fn round_robin_cycles_and_workers_start_apart() {
    let group = Arc::new(UpstreamGroup::new(
        "g",
        servers(&[1, 1, 1]),
        Algorithm::RoundRobin,
    ));
    let b = Rc::new(Balancer::new(Arc::clone(&group), 0));
    let picks: Vec<_> = (0..7).map(|_| pick(&b)).collect();
    assert_eq!(picks, [0, 1, 2, 0, 1, 2, 0]);
    let other = Rc::new(Balancer::new(group, 4));
    assert_eq!(pick(&other), 1);
}

#[test]
fn smooth_weighted_round_robin_interleaves() {
    let b = balancer(UpstreamGroup::new(
        "g",
        servers(&[5, 1, 1]),
        Algorithm::WeightedRoundRobin,
    ));
    let picks: Vec<_> = (0..7).map(|_| pick(&b)).collect();
    assert_eq!(picks, [0, 0, 1, 0, 2, 0, 0], "nginx's interleave");
    let b = balancer(UpstreamGroup::new(
        "g",
        servers(&[1, 2, 3]),
        Algorithm::WeightedRoundRobin,
    ));
    assert_eq!(counts(&b, 6000), [1000, 2000, 3000], "exact over whole rounds");
}

#[test]
fn smooth_weighted_round_robin_shares_out_the_servers_left_out() {
    // Server 1 (weight 2) is down: the others keep their 1 : 3 shares, in
    // whole rounds, and the walk over the schedule never picks it.
    let group = UpstreamGroup::new("g", servers(&[1, 2, 3]), Algorithm::WeightedRoundRobin);
    group.health.set_up(1, false);
    let b = balancer(group);
    assert_eq!(counts(&b, 4000), [1000, 0, 3000]);
    // A retry skips the server tried, whatever the schedule says next.
    let b = balancer(UpstreamGroup::new(
        "g",
        servers(&[5, 1, 1]),
        Algorithm::WeightedRoundRobin,
    ));
    let mut tried = Tried::default();
    tried.add(0);
    let picks: Vec<_> = (0..4).map(|_| b.pick(0, &tried, 0).unwrap().peer()).collect();
    assert_eq!(picks, [1, 2, 1, 2]);
}

#[test]
fn smooth_weighted_round_robin_scans_when_a_round_is_too_long_to_keep() {
    // A round of 20,001 picks is not kept: the pick scans as nginx does,
    // with the same result.
    let b = balancer(UpstreamGroup::new(
        "g",
        servers(&[10_000, 1, 10_000]),
        Algorithm::WeightedRoundRobin,
    ));
    assert!(b.group().schedule().is_none());
    let picks: Vec<_> = (0..4).map(|_| pick(&b)).collect();
    assert_eq!(picks, [0, 2, 0, 2]);
    assert_eq!(counts(&b, 20_001 - 4)[1], 1, "the light server once a round");
}

#[test]
fn smooth_weighted_round_robin_workers_start_apart() {
    let group = Arc::new(UpstreamGroup::new(
        "g",
        servers(&[1; 16]),
        Algorithm::WeightedRoundRobin,
    ));
    let firsts: std::collections::HashSet<_> = (0..4)
        .map(|worker| pick(&Rc::new(Balancer::new(Arc::clone(&group), worker))))
        .collect();
    assert_eq!(firsts.len(), 4, "four workers, four first servers: {firsts:?}");
}

#[test]
fn random_follows_the_weights() {
    let b = balancer(UpstreamGroup::new("g", servers(&[1, 3]), Algorithm::Random));
    let c = counts(&b, 40_000);
    let share = c[1] as f64 / 40_000.0;
    assert!((0.73..0.77).contains(&share), "weight 3 of 4 got {share}");
    let b = balancer(UpstreamGroup::new("g", servers(&[1; 4]), Algorithm::Random));
    for n in counts(&b, 40_000) {
        assert!((9_400..10_600).contains(&n), "{n} of 40000 over 4");
    }
}

#[test]
fn the_alias_table_gives_each_server_its_weights_share() {
    for weights in [
        &[1i64, 3][..],
        &[5, 1, 1],
        &[1, 2, 3, 4, 5, 6, 7],
        &[1000, 1, 1, 1],
    ] {
        let table = crate::group::alias_table(weights);
        let n = weights.len() as f64;
        let total: i64 = weights.iter().sum();
        let mut share = vec![0f64; weights.len()];
        for (i, slot) in table.iter().enumerate() {
            let keep = slot.keep as f64 / 2f64.powi(32);
            share[i] += keep / n;
            share[usize::from(slot.other)] += (1.0 - keep) / n;
        }
        for (i, &w) in weights.iter().enumerate() {
            let want = w as f64 / total as f64;
            assert!(
                (share[i] - want).abs() < 1e-8,
                "{weights:?}: server {i} has {} of {want}",
                share[i]
            );
        }
    }
}

#[test]
fn least_conn_sends_to_the_least_loaded_for_its_weight() {
    let b = balancer(UpstreamGroup::new("g", servers(&[1, 1, 2]), Algorithm::LeastConn));
    let tried = Tried::default();
    // Hold leases: the picks spread so that load / weight stays level.
    let held: Vec<_> = (0..8).map(|_| b.pick(0, &tried, 0).unwrap()).collect();
    assert_eq!([b.in_flight(0), b.in_flight(1), b.in_flight(2)], [2, 2, 4]);
    drop(held);
    assert_eq!(b.in_flight(2), 0, "a dropped lease is no longer in flight");
    // A server with long requests gets the next ones elsewhere.
    let slow: Vec<_> = (0..3).map(|_| b.pick_server(0, &tried, 0).unwrap()).collect();
    for _ in 0..4 {
        assert_ne!(pick(&b), 0);
    }
    drop(slow);
}

#[test]
fn least_conn_compares_load_for_weight_exactly() {
    // Weights 2 and 3: loads 2 and 3 are level, so the next request goes
    // to the next server from the rotating start, not to whichever a
    // rounded ratio favours; one more on the first tips it to the second.
    let b = balancer(UpstreamGroup::new("g", servers(&[2, 3]), Algorithm::LeastConn));
    let tried = Tried::default();
    let mut held: Vec<_> = (0..2).map(|_| b.pick_server(0, &tried, 0).unwrap()).collect();
    held.extend((0..3).map(|_| b.pick_server(1, &tried, 0).unwrap()));
    let first = pick(&b);
    let second = pick(&b);
    assert_ne!(first, second, "level loads take turns");
    held.push(b.pick_server(0, &tried, 0).unwrap());
    assert_eq!(pick(&b), 1, "3 for weight 2 is more than 3 for weight 3");
    // Weights whose least common multiple passes 32 bits still order by
    // load for weight.
    let b = balancer(UpstreamGroup::new(
        "g",
        servers(&[65_521, 65_519, 65_497]),
        Algorithm::LeastConn,
    ));
    let held: Vec<_> = (0..3 * 65_000).map(|_| b.pick(0, &tried, 0).unwrap()).collect();
    for peer in 0..3 {
        assert!(
            (64_900..65_100).contains(&b.in_flight(peer)),
            "{peer}: {}",
            b.in_flight(peer)
        );
    }
    drop(held);
}

#[test]
fn least_conn_index_picks_what_a_scan_would() {
    // Random picks (some retries), finished requests and health changes:
    // every pick has the least load for its weight among the candidates.
    let weights = [1, 2, 3, 1, 2, 1, 1, 4, 1, 1];
    let group = UpstreamGroup::new("g", servers(&weights), Algorithm::LeastConn);
    let health = Arc::clone(&group.health);
    let b = balancer(group);
    let mut held = Vec::new();
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut scanned = 0;
    for _ in 0..50_000 {
        let r = next();
        match r % 16 {
            0..=7 => {
                let mut tried = Tried::default();
                if r % 5 == 0 {
                    tried.add((r >> 20) as usize % weights.len());
                }
                let candidates: Vec<usize> = (0..weights.len())
                    .filter(|&i| health.is_up(i) && !tried.contains(i))
                    .collect();
                let ratio = |i: usize| (u64::from(b.in_flight(i)), u64::from(weights[i]));
                let Ok(lease) = b.pick(0, &tried, 0) else {
                    assert!(candidates.is_empty());
                    continue;
                };
                let (load, weight) = ratio(lease.peer());
                let (load, weight) = (load - 1, weight);
                for &i in &candidates {
                    let (l, w) = ratio(i);
                    let l = if i == lease.peer() { l - 1 } else { l };
                    assert!(
                        load * w <= l * weight,
                        "picked {} at {load}/{weight} over {i} at {l}/{w}",
                        lease.peer()
                    );
                }
                scanned += 1;
                held.push(lease);
            }
            8..=14 if !held.is_empty() => {
                let lease = held.swap_remove((r >> 8) as usize % held.len());
                lease.finish(
                    Outcome::Success {
                        latency: Duration::from_millis(1),
                    },
                    0,
                );
            }
            _ => {
                let peer = (r >> 12) as usize % weights.len();
                // Keep one server up: with none, the group fails open.
                let up = health.is_up(peer) || peer == 0;
                health.set_up(peer, !up || peer == 0);
            }
        }
    }
    assert!(scanned > 20_000);
}

#[test]
fn p2c_ewma_sends_less_to_a_slow_server() {
    let b = balancer(UpstreamGroup::new("g", servers(&[1, 1, 1]), Algorithm::P2cEwma));
    let tried = Tried::default();
    // Teach it: server 0 answers in 50 ms, the others in 1 ms.
    for peer in 0..3 {
        let latency = Duration::from_millis(if peer == 0 { 50 } else { 1 });
        let lease = b.pick_server(peer, &tried, 0).unwrap();
        lease.finish(Outcome::Success { latency }, 0);
    }
    let mut c = [0usize; 3];
    for _ in 0..3000 {
        let lease = b.pick(0, &tried, 10).unwrap();
        c[lease.peer()] += 1;
        let latency = Duration::from_millis(if lease.peer() == 0 { 50 } else { 1 });
        lease.finish(Outcome::Success { latency }, 10);
    }
    assert!(c[0] < 300, "the slow server got {} of 3000: {c:?}", c[0]);
    assert!(c[1] > 1000 && c[2] > 1000, "{c:?}");
}

#[test]
fn consistent_hash_keeps_keys_and_remaps_about_one_in_n() {
    let n = 10;
    let keys = 20_000u64;
    let all = balancer(UpstreamGroup::new("g", servers(&[1; 10]), consistent()));
    let before: Vec<_> = (0..keys)
        .map(|k| {
            all.pick(key_hash(&k.to_le_bytes()), &Tried::default(), 0)
                .unwrap()
                .peer()
        })
        .collect();
    // The same key, the same server.
    for k in 0..100u64 {
        let again = all
            .pick(key_hash(&k.to_le_bytes()), &Tried::default(), 0)
            .unwrap();
        assert_eq!(again.peer(), before[k as usize]);
    }
    // Spread within 25% of the mean.
    let mut per = vec![0usize; n];
    for &p in &before {
        per[p] += 1;
    }
    for c in &per {
        assert!(*c > 1500 && *c < 2500, "{per:?}");
    }
    // Server 3 leaves the configuration: only its keys move.
    let mut fewer = servers(&[1; 10]);
    fewer.remove(3);
    let nine = balancer(UpstreamGroup::new("g", fewer, consistent()));
    let mut moved = 0;
    for k in 0..keys {
        let now = nine
            .pick(key_hash(&k.to_le_bytes()), &Tried::default(), 0)
            .unwrap();
        // Indices above 3 shifted by one.
        let was = before[k as usize];
        let same = match was {
            3 => false,
            w if w > 3 => now.peer() == w - 1,
            w => now.peer() == w,
        };
        if !same {
            moved += 1;
            assert_eq!(was, 3, "key {k} moved off a server that stayed");
        }
    }
    let share = moved as f64 / keys as f64;
    assert!((0.06..0.15).contains(&share), "{share} of keys moved");
    // Server 3 held down by health: the same, without a new ring.
    all.group().health.set_up(3, false);
    for k in 0..2000u64 {
        let now = all
            .pick(key_hash(&k.to_le_bytes()), &Tried::default(), 0)
            .unwrap();
        if before[k as usize] != 3 {
            assert_eq!(now.peer(), before[k as usize]);
        } else {
            assert_ne!(now.peer(), 3);
        }
    }
}

#[test]
fn consistent_hash_bounds_the_load() {
    let b = balancer(UpstreamGroup::new("g", servers(&[1; 4]), consistent()));
    // Every request has the same key: the bound spreads them anyway.
    let held: Vec<_> = (0..100)
        .map(|_| b.pick(key_hash(b"hot"), &Tried::default(), 0).unwrap())
        .collect();
    let mean = 100.0 / 4.0;
    for peer in 0..4 {
        let load = b.in_flight(peer);
        assert!(
            f64::from(load) <= (mean * 1.25f64).ceil() + 1.0,
            "server {peer} holds {load}, over (1 + e) x mean"
        );
    }
    drop(held);
}

#[test]
fn down_servers_are_skipped_and_backups_used_only_when_primaries_are_down() {
    let mut s = servers(&[1, 1, 1]);
    s[2].backup = true;
    let b = balancer(UpstreamGroup::new("g", s, Algorithm::RoundRobin));
    assert!(counts(&b, 30).iter().zip([15, 15, 0]).all(|(&c, e)| c == e));
    b.group().health.set_up(0, false);
    assert_eq!(counts(&b, 10), [0, 10, 0]);
    b.group().health.set_up(1, false);
    assert_eq!(counts(&b, 10), [0, 0, 10], "the backup, now");
    b.group().health.set_up(0, true);
    assert_eq!(counts(&b, 10), [10, 0, 0], "a primary is back");
}

#[test]
fn with_nothing_healthy_the_group_fails_open_or_refuses() {
    let group = UpstreamGroup::new("g", servers(&[1, 1]), Algorithm::RoundRobin);
    group.health.set_up(0, false);
    group.health.set_up(1, false);
    let open = balancer(group);
    let lease = open.pick(0, &Tried::default(), 0).unwrap();
    assert!(lease.failed_open());
    let mut group = UpstreamGroup::new("g", servers(&[1, 1]), Algorithm::RoundRobin);
    group.fail_open = false;
    group.health.set_up(0, false);
    group.health.set_up(1, false);
    let closed = balancer(group);
    assert_eq!(
        closed.pick(0, &Tried::default(), 0).unwrap_err(),
        NoPeer::Unhealthy
    );
}

#[test]
fn a_retry_goes_to_a_server_not_tried() {
    let b = balancer(UpstreamGroup::new(
        "g",
        servers(&[1, 1, 1]),
        Algorithm::RoundRobin,
    ));
    let mut tried = Tried::default();
    for _ in 0..3 {
        let lease = b.pick(0, &tried, 0).unwrap();
        assert!(!tried.contains(lease.peer()));
        tried.add(lease.peer());
    }
    assert_eq!(b.pick(0, &tried, 0).unwrap_err(), NoPeer::AllTried);
}

#[test]
fn passive_health_ejects_backs_off_and_returns_on_probation() {
    let mut group = UpstreamGroup::new("g", servers(&[1, 1]), Algorithm::RoundRobin);
    group.passive = PassiveHealth {
        failures: 3,
        backoff: Duration::from_secs(10),
        max_backoff: Duration::from_secs(25),
        on_5xx: true,
    };
    let b = balancer(group);
    let tried = Tried::default();
    let fail = |now| {
        b.pick_server(0, &tried, now)
            .map(|l| l.finish(Outcome::Failure, now))
    };
    assert_eq!(fail(0), Some(None));
    assert_eq!(fail(0), Some(None));
    // A success in between resets the count.
    let ok = Outcome::Success {
        latency: Duration::from_millis(1),
    };
    assert_eq!(b.pick_server(0, &tried, 0).unwrap().finish(ok, 0), None);
    assert_eq!(fail(0), Some(None));
    assert_eq!(fail(0), Some(None));
    let ejected = Some(Some(HealthEvent::Ejected {
        backoff: Duration::from_secs(10),
    }));
    assert_eq!(fail(1), ejected);
    // Out for 10 s: every pick goes to server 1.
    assert_eq!(
        (0..10)
            .filter(|_| b.pick(0, &tried, 5_000).unwrap().peer() == 0)
            .count(),
        0
    );
    // On probation after 10 s; one failure ejects it again, for 20 s.
    let twice = Some(Some(HealthEvent::Ejected {
        backoff: Duration::from_secs(20),
    }));
    assert_eq!(fail(10_001), twice);
    assert!(b.pick_server(0, &tried, 29_000).is_none());
    // The next is capped at 25 s.
    let capped = Some(Some(HealthEvent::Ejected {
        backoff: Duration::from_secs(25),
    }));
    assert_eq!(fail(30_002), capped);
    // A success on probation brings it back, and a 5xx counts (on_5xx).
    let back = b.pick_server(0, &tried, 60_000).unwrap().finish(ok, 60_000);
    assert_eq!(back, Some(HealthEvent::Returned));
    let err = Outcome::ServerError {
        latency: Duration::from_millis(1),
    };
    for _ in 0..2 {
        assert_eq!(
            b.pick_server(0, &tried, 60_000).unwrap().finish(err, 60_000),
            None
        );
    }
    assert!(b
        .pick_server(0, &tried, 60_000)
        .unwrap()
        .finish(err, 60_000)
        .is_some());
}

#[test]
fn neutral_outcomes_say_nothing_about_the_server() {
    let b = balancer(UpstreamGroup::new("g", servers(&[1]), Algorithm::RoundRobin));
    for _ in 0..10 {
        assert_eq!(pick_lease(&b).finish(Outcome::Neutral, 0), None);
    }
    assert!(b.pick(0, &Tried::default(), 0).is_ok());
}

fn pick_lease(b: &Rc<Balancer>) -> Lease {
    b.pick(0, &Tried::default(), 0).unwrap()
}

#[test]
fn connection_limits_hold_across_workers() {
    let mut s = servers(&[1, 1]);
    s[0].max_connections = Some(2);
    s[1].max_connections = Some(1);
    let group = Arc::new(UpstreamGroup::new("g", s, Algorithm::RoundRobin));
    let w0 = Rc::new(Balancer::new(Arc::clone(&group), 0));
    let w1 = Rc::new(Balancer::new(Arc::clone(&group), 1));
    let tried = Tried::default();
    let a = w0.pick(0, &tried, 0).unwrap();
    let b = w1.pick(0, &tried, 0).unwrap();
    let c = w0.pick(0, &tried, 0).unwrap();
    assert_eq!(w1.pick(0, &tried, 0).unwrap_err(), NoPeer::AtLimit);
    drop(b);
    assert!(w1.pick(0, &tried, 0).is_ok());
    drop((a, c));
}

#[test]
fn sticky_values_name_servers_without_their_addresses() {
    let s = servers(&[1, 1, 1]);
    let sticky = Sticky::new("rw_srv".into(), None, "app", &s);
    let again = Sticky::new("rw_srv".into(), None, "app", &s);
    let other = Sticky::new("rw_srv".into(), None, "secret", &s);
    for i in 0..3 {
        assert_eq!(sticky.value(i), again.value(i), "the same in every process");
        assert_ne!(sticky.value(i), other.value(i), "keyed");
        assert!(!sticky.value(i).contains("9000") && !sticky.value(i).contains("127"));
        assert_eq!(sticky.server(sticky.value(i).as_bytes()), Some(i));
    }
    assert_eq!(sticky.server(b"nope"), None);
}

#[test]
fn the_retry_budget_is_per_balancer() {
    let mut group = UpstreamGroup::new("g", servers(&[1]), Algorithm::RoundRobin);
    group.retry.budget_ratio = 0.1;
    group.retry.budget_min_per_second = 0;
    let b = balancer(group);
    for _ in 0..100 {
        b.record_request(0);
    }
    assert_eq!((0..100).filter(|_| b.try_retry(0)).count(), 10);
}
