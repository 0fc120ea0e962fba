//! A policy's tries updated in place (`egress_agent::dataplane::trie_steps`)
//! never show a lookup a third answer: the steps are written one at a
//! time into the real `ALLOW_V4` trie of a data plane, and after each one
//! the kernel's longest-prefix lookup of every probe address must give the
//! old table's answer or the new table's, and the new one at the end.

use std::{collections::HashMap, net::Ipv4Addr};

use aya::maps::{
    lpm_trie::{Key, LpmTrie},
    Map, MapData, MapError,
};
use egress_agent::dataplane::{trie_steps, Dataplane, TrieStep};
use egress_common::{PolicyAddrV4, POLICY_BITS};
use integration_tests::{require_root, PinDir, TestCgroup};
use ipnet::Ipv4Net;

/// A policy id no apply hands out here (the data plane stays empty).
const POLICY: u32 = 0x00ab_cdef;

type Trie = LpmTrie<MapData, PolicyAddrV4, u32>;

fn key(net: Ipv4Net) -> Key<PolicyAddrV4> {
    Key::new(
        POLICY_BITS + u32::from(net.prefix_len()),
        PolicyAddrV4::new(POLICY, net.network().octets()),
    )
}

/// The kernel's answer for `addr`: the value of its longest prefix.
fn lookup(trie: &Trie, addr: Ipv4Addr) -> Option<u32> {
    let full = Key::new(POLICY_BITS + 32, PolicyAddrV4::new(POLICY, addr.octets()));
    match trie.get(&full, 0) {
        Ok(v) => Some(v),
        Err(MapError::KeyNotFound) => None,
        Err(e) => panic!("lookup of {addr}: {e}"),
    }
}

/// The answer a table gives, computed without the kernel.
fn expected(table: &[(Ipv4Net, u32)], addr: Ipv4Addr) -> Option<u32> {
    table
        .iter()
        .filter(|(n, _)| n.contains(&addr))
        .max_by_key(|(n, _)| n.prefix_len())
        .map(|(_, v)| *v)
}

fn write(trie: &mut Trie, step: TrieStep<Ipv4Net>) {
    match step {
        TrieStep::Upsert(n, v) => trie.insert(&key(n), v, 0).unwrap(),
        TrieStep::Delete(n) => trie.remove(&key(n)).unwrap(),
    }
}

/// Writes `from`, then `steps` one at a time; returns the first probe that
/// saw neither `from`'s nor `to`'s answer, if any. Leaves the trie empty.
fn third_answer(
    trie: &mut Trie,
    from: &[(Ipv4Net, u32)],
    to: &[(Ipv4Net, u32)],
    steps: &[TrieStep<Ipv4Net>],
) -> Option<String> {
    for (n, v) in from {
        trie.insert(&key(*n), *v, 0).unwrap();
    }
    let probes: Vec<Ipv4Addr> = from
        .iter()
        .chain(to)
        .flat_map(|(n, _)| {
            [
                n.network(),
                n.broadcast(),
                n.hosts().nth(1).unwrap_or(n.addr()),
            ]
        })
        .chain([Ipv4Addr::new(198, 51, 100, 1)])
        .collect();
    let mut found = None;
    for (i, step) in steps.iter().enumerate() {
        write(trie, *step);
        for a in &probes {
            let got = lookup(trie, *a);
            let (old, new) = (expected(from, *a), expected(to, *a));
            if found.is_none() && got != old && got != new {
                found = Some(format!(
                    "after step {i} ({step:?}) {a} answers {got:?}, old {old:?}, new {new:?}"
                ));
            }
        }
    }
    for a in &probes {
        assert_eq!(lookup(trie, *a), expected(to, *a), "{a} after all steps");
    }
    for (n, _) in to {
        trie.remove(&key(*n)).unwrap();
    }
    found
}

fn net(s: &str) -> Ipv4Net {
    s.parse().unwrap()
}

#[test]
fn every_lookup_sees_the_old_or_the_new_answer() {
    require_root();
    let root = TestCgroup::new().unwrap();
    let pins = PinDir::new().unwrap();
    let dataplane = Dataplane::open(pins.path(), root.path()).unwrap();
    let map = MapData::from_pin(pins.path().join("maps/ALLOW_V4")).unwrap();
    let mut trie = Trie::try_from(Map::from_map_data(map).unwrap()).unwrap();

    // The case the order exists for: written shortest first, the /8 alone
    // would answer 7 inside the /24, which is neither old (none) nor new
    // (8). The check catches that on the kernel's trie.
    let to = [(net("10.0.0.0/8"), 7), (net("10.1.2.0/24"), 8)];
    let steps = trie_steps(&[], &to);
    assert_eq!(third_answer(&mut trie, &[], &to, &steps), None);
    let mut wrong = steps.clone();
    wrong.reverse();
    assert!(
        third_answer(&mut trie, &[], &to, &wrong).is_some(),
        "shortest-first upserts show a third answer"
    );
    // And deletes longest first: removing the /32 before the /24 would
    // answer the /24's old value where the new table says the /8's.
    let from = [
        (net("10.0.0.0/8"), 1),
        (net("10.1.2.0/24"), 2),
        (net("10.1.2.3/32"), 3),
    ];
    let to = [(net("10.0.0.0/8"), 1)];
    let steps = trie_steps(&from, &to);
    assert_eq!(third_answer(&mut trie, &from, &to, &steps), None);
    let mut wrong = steps.clone();
    wrong.reverse();
    assert!(third_answer(&mut trie, &from, &to, &wrong).is_some());

    // Random nested tables, changed a little and a lot.
    let mut seed = 0x9e37_79b9_u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let table = |next: &mut dyn FnMut() -> u64, size: u64| {
        let mut t: HashMap<Ipv4Net, u32> = HashMap::new();
        for _ in 0..size {
            let len = [0, 8, 16, 20, 24, 28, 32][(next() % 7) as usize];
            let addr = Ipv4Addr::new(10, (next() % 3) as u8, (next() % 3) as u8, next() as u8);
            let n = Ipv4Net::new(addr, len).unwrap().trunc();
            t.insert(n, (next() % 4) as u32 + 1);
        }
        t.into_iter().collect::<Vec<_>>()
    };
    for round in 0..300 {
        let size = 1 + next() % 16;
        let from = table(&mut next, size);
        let to = if round % 2 == 0 {
            let size = next() % 16;
            table(&mut next, size)
        } else {
            // A few entries of `from` added, removed or changed.
            let mut to = from.clone();
            to.retain(|_| next() % 5 != 0);
            let more = next() % 3;
            to.extend(table(&mut next, more));
            for e in to.iter_mut().filter(|_| next() % 6 == 0) {
                e.1 = e.1 % 4 + 1;
            }
            let mut seen = std::collections::HashSet::new();
            to.retain(|(n, _)| seen.insert(*n));
            to
        };
        let steps = trie_steps(&from, &to);
        if let Some(bad) = third_answer(&mut trie, &from, &to, &steps) {
            panic!("round {round}: {bad}\nfrom {from:?}\nto {to:?}\nsteps {steps:?}");
        }
    }
    drop(dataplane);
}
