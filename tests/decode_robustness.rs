//! The fuzz targets' entry points, run on random and mutated inputs in the
//! ordinary test suite (cargo-fuzz explores much further; see README).

use proptest::prelude::*;
use vpool::meta::fuzzing;
use vpool::meta::label::{Label, MemberEntry, PoolState};
use vpool::meta::node::Node;
use vpool::raid::RaidLevel;
use vpool::thin::store::fuzzing as schema_fuzzing;

fn valid_label() -> Vec<u8> {
    Label {
        pool_uuid: [1; 16],
        member_uuid: [2; 16],
        member_index: 0,
        level: RaidLevel::Raid1,
        state: PoolState::Active,
        stripe_unit: 65536,
        chunk_size: 65536,
        device_size: 1 << 30,
        meta_offset: 4096,
        meta_blocks: 1024,
        msm_pages: 2,
        meta_copies: 2,
        data_start: 1 << 23,
        created: 0,
        pool_name: "tank".into(),
        members: vec![
            MemberEntry {
                uuid: [2; 16],
                data_size: 1 << 29
            };
            2
        ],
        generation: 0,
    }
    .encode()
}

fn valid_node() -> Vec<u8> {
    let mut n = Node::leaf(1, 16);
    for k in 0..50u64 {
        n.keys.push(k * 2);
        n.values.extend_from_slice(&[k as u8; 16]);
    }
    n.encode(vpool::units::Block(5), 1, 7)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(data in prop::collection::vec(any::<u8>(), 0..4200)) {
        fuzzing::label(&data);
        schema_fuzzing::superblock(&data);
        fuzzing::node(&data);
        schema_fuzzing::catalog(&data);
        vpool::frontend::nbd::fuzz_request(&data);
        vpool::control::fuzz_http(&data);
        vpool::frontend::docker::fuzz_body(&data);
        vpool::frontend::snapshotter::fuzz_filter(&data);
        vpool::control::stream::fuzz_stream(&data);
    }

    /// containerd List filters made of the grammar's pieces (fields,
    /// operators, quotes, escapes, commas) and any text: never a panic.
    #[test]
    fn snapshot_filters_never_panic(
        parts in prop::collection::vec(
            prop_oneof![
                Just("name".to_string()), Just("labels.".to_string()), Just("\"".to_string()),
                Just("==".to_string()), Just("!=".to_string()), Just("~=".to_string()),
                Just(",".to_string()), Just("\\".to_string()), Just(".".to_string()),
                "\\PC{0,6}",
            ],
            0..14,
        )
    ) {
        vpool::frontend::snapshotter::fuzz_filter(parts.concat().as_bytes());
    }

    /// Plugin bodies with names of any text (multi-byte characters at every
    /// cut, NUL, `/`, `..`) and any options: never a panic.
    #[test]
    fn plugin_bodies_never_panic(name in "\\PC{0,90}", size in "\\PC{0,12}") {
        let body = serde_json::json!({"Name": name, "Opts": {"size": size}}).to_string();
        vpool::frontend::docker::fuzz_body(body.as_bytes());
    }

    /// Control API calls built from plausible pieces (a method, a path of
    /// known and random segments, a JSON body of any request kind naming
    /// anything): never a panic, and what parses round-trips.
    #[test]
    fn control_calls_never_panic(
        m in 0u8..4,
        segs in prop::collection::vec(prop_oneof![
            Just("v1".to_string()), Just("pools".to_string()), Just("volumes".to_string()),
            Just("snapshots".to_string()), Just("scrub".to_string()), Just("members".to_string()),
            Just("tank".to_string()), Just("%40".to_string()), Just("..".to_string()),
            "[a-z%@/.\x00-\x7f]{0,12}",
        ], 0..6),
        body in prop_oneof![
            Just(String::new()),
            "[{}\\\":a-z_0-9,\\[\\] ]{0,80}",
            Just(r#"{"pool_destroy":{"name":"tank","force":true}}"#.to_string()),
            Just(r#"{"vol_create":{"path":"tank/x","size":1}}"#.to_string()),
            Just(r#"{"pool_scrub":{"name":"other","check_only":false}}"#.to_string()),
        ],
    ) {
        let mut data = vec![m];
        data.extend_from_slice(format!("/{}\n", segs.join("/")).as_bytes());
        data.extend_from_slice(body.as_bytes());
        vpool::control::fuzz_http(&data);
        vpool::control::stream::fuzz_stream(&data);
    }

    #[test]
    fn mutated_structures_never_panic(flips in prop::collection::vec((0usize..4096, any::<u8>()), 1..8)) {
        for base in [valid_label(), valid_node()] {
            let mut b = base.clone();
            for (i, x) in &flips {
                b[*i] ^= x;
            }
            fuzzing::label(&b);
            fuzzing::node(&b);
            schema_fuzzing::superblock(&b);
        }
    }

    /// A send stream with bytes changed, cut or grown: never a panic, and
    /// (checked inside) what is accepted is in order and in the volume.
    #[test]
    fn mutated_streams_never_panic(
        flips in prop::collection::vec((0usize..1200, any::<u8>()), 0..6),
        cut in 0usize..1300,
    ) {
        let mut b = vpool::control::stream::sample_stream();
        for (i, x) in &flips {
            let n = b.len();
            b[*i % n] ^= x;
        }
        b.truncate(cut.max(1));
        vpool::control::stream::fuzz_stream(&b);
    }
}

/// Found by cargo-fuzz: a 64-byte pool name with no terminator decoded to a
/// label that re-encoded differently.
#[test]
fn unterminated_pool_name_is_rejected() {
    use vpool::meta::codec::{salt, seal};
    let mut b = valid_label();
    b[128..192].fill(b'e');
    seal(&mut b, salt::LABEL);
    let err = Label::decode(&b).unwrap_err();
    assert!(err.contains("not terminated"), "{err}");
    fuzzing::label(&b);
}

/// Found by cargo-fuzz: a catalog length near 2^64 overflowed the bounds check.
#[test]
fn huge_catalog_length_is_rejected() {
    let mut b = vec![0u8; 40];
    b[0..4].copy_from_slice(b"VCAT");
    b[4..8].copy_from_slice(&1u32.to_le_bytes());
    b[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(vpool::thin::store::catalog::Catalog::decode(&b)
        .unwrap_err()
        .contains("truncated"));
}
