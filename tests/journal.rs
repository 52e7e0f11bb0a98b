//! The data journal (issue 15): on pools whose data has no second copy,
//! small writes over data a commit or flush-log record holds go home only
//! once the log names them (an intent with the new checksum), and the next
//! flush's round logs a copy of their blocks, so a device that lies about
//! a write (lost, misdirected, torn) and then loses power costs an error
//! at worst, never other bytes. Before the journal,
//! the crash resync kept whatever a region written in place held, and the
//! first test returned old data as flushed data.

mod common;
use common::*;
use vpool::device::WritebackPlan;
use vpool::raid::RaidLevel;
use vpool::Pool;

const VOL: usize = 2 << 20;
const BLK: usize = 4096;

/// A pool over write-cached members with a filled, committed volume "a"
/// (so writes go over committed data).
fn filled(level: RaidLevel, n: usize) -> (Cached, Pool, Vec<u8>) {
    let (m, devs) = cached_members(mem_devices(n, 32 * MIB));
    let pool = create_with_unit(level, devs, 16 * 1024);
    pool.create_volume("a", VOL as u64).unwrap();
    let model = pattern(VOL, 99);
    pool.volume("a", None).unwrap().write_at(&model, 0).unwrap();
    pool.commit().unwrap();
    (m, pool, model)
}

/// Arm one lie: a lost, misdirected or torn write reported done.
fn lie(rng: &mut Rng, plan: &WritebackPlan) -> &'static str {
    match rng.below(3) {
        0 => {
            plan.lose_writes(1);
            "lost write"
        }
        1 => {
            let delta = (rng.below(512) as i64 - 256) * 4096;
            plan.misdirect_writes(1, if delta == 0 { 4096 } else { delta });
            "misdirected write"
        }
        _ => {
            plan.tear_writes(1);
            "torn write"
        }
    }
}

#[test]
fn a_lost_write_then_a_power_cut_keeps_the_flushed_data() {
    for (level, n) in [(RaidLevel::Linear, 2), (RaidLevel::Raid0, 2)] {
        // One member loses its next write: the block's home if it is on
        // that member (before the journal, the one case that failed), else
        // the journal's copy or record there.
        for liar in 0..n {
            let what = format!("{level} x{n}, member {liar} lies");
            let (m, pool, _) = filled(level, n);
            let vol = pool.volume("a", None).unwrap();
            let block = pattern(BLK, 5);
            // A flushed write in the region first (so, before the journal,
            // its intent bit was set and the lie struck the home write).
            vol.write_at(&pattern(BLK, 4), 80 * 1024).unwrap();
            vol.flush().unwrap();
            m.plans[liar].lose_writes(1);
            vol.write_at(&block, 64 * 1024).unwrap();
            vol.flush().unwrap();
            assert_eq!(m.plans[liar].struck(), 1, "{what}");
            // Unflushed writes in the same region, then the power goes.
            vol.write_at(&pattern(BLK, 6), 72 * 1024).unwrap();
            drop(vol);
            let stats = pool.flush_stats();
            drop(pool);
            let (_m, pool) = power_cut(&m).unwrap();
            let mut got = vec![0u8; BLK];
            match pool.volume("a", None).unwrap().read_at(&mut got, 64 * 1024) {
                Ok(()) => assert!(
                    got == block,
                    "{what}: the flushed block reads other bytes after a power cut"
                ),
                Err(e) => panic!("{what}: one lie lost a flushed block: {e}"),
            }
            let r = pool.check(false).unwrap();
            assert!(r.clean(), "{what}: {r:?}");
            assert!(stats.journaled_blocks >= 1, "{what}: {stats:?}");
            // The three overwrites went in place, each after a round of
            // intents (a lie here strikes one copy of a record at most).
            assert_eq!(stats.named_writes, 3, "{what}: {stats:?}");
            assert_eq!(stats.unnamed_writes, 0, "{what}: {stats:?}");
            assert!(stats.intent_rounds >= 1, "{what}: {stats:?}");
        }
    }
}

/// Mirrors (issue 22): small overwrites of committed data on raid1 leave
/// a copy in the log too (after their region's mark, without intents), so
/// a flush after them flushes each member once, for the log's round, where
/// it flushed each twice (the data, then the log). And the copy repairs:
/// a home write lost on both mirrors, then a power cut, reads as flushed
/// (before, the block's new checksum matched neither mirror: an error).
#[test]
fn mirrors_copy_small_overwrites_into_the_log() {
    let (m, pool, _) = filled(RaidLevel::Raid1, 2);
    let vol = pool.volume("a", None).unwrap();
    // A flushed write in the region first: its mark is then on the medium.
    vol.write_at(&pattern(BLK, 4), 80 * 1024).unwrap();
    vol.flush().unwrap();
    let flushes: Vec<u64> = m.plans.iter().map(|p| p.flushes_seen()).collect();
    let durable: Vec<u64> = m.plans.iter().map(|p| p.durable_writes_seen()).collect();
    let (block, two) = (pattern(BLK, 5), pattern(2 * BLK, 7));
    for p in &m.plans {
        p.lose_writes(1);
    }
    vol.write_at(&block, 64 * 1024).unwrap();
    // And a write over two chunks (16 KiB each here), in place at once.
    vol.write_at(&two, 128 * 1024 - BLK as u64).unwrap();
    vol.flush().unwrap();
    for (i, p) in m.plans.iter().enumerate() {
        assert_eq!(
            p.struck(),
            1,
            "member {i}: the home write was not the one lost"
        );
        // The round's record and copies: one durable write of the log's
        // blocks, and no flush of the member (which would also write back
        // the home writes the copies stand for).
        assert_eq!(
            (
                p.flushes_seen() - flushes[i],
                p.durable_writes_seen() - durable[i]
            ),
            (0, 1),
            "member {i}: a flush of copied writes (flushes, durable writes)"
        );
    }
    let stats = pool.flush_stats();
    assert!(stats.journaled_blocks >= 3, "{stats:?}");
    assert_eq!(stats.intent_rounds, 0, "mirrors need no intents: {stats:?}");
    drop(vol);
    drop(pool);
    let (_m, pool) = power_cut(&m).unwrap();
    let v = pool.volume("a", None).unwrap();
    let mut got = vec![0u8; BLK];
    v.read_at(&mut got, 64 * 1024)
        .expect("a home write lost on both mirrors after a flush");
    assert!(got == block, "the flushed block reads other bytes");
    let mut got = vec![0u8; 2 * BLK];
    v.read_at(&mut got, 128 * 1024 - BLK as u64).unwrap();
    assert!(
        got == two,
        "the flushed write over two chunks reads other bytes"
    );
    let r = pool.check(false).unwrap();
    assert!(r.clean(), "{r:?}");
}

/// A block's copy in one record, then a flushed write over it that the
/// log keeps no copy of (larger than half a chunk), then a power cut: the
/// later write stays. The replay used to write every record's copies home
/// in turn, so the older copy went over it (an error on linear and raid0,
/// where its checksum no longer matched; the old bytes on raid1, whose
/// resync took them for a write in flight). Found by the campaign below
/// with raid1 in it.
#[test]
fn a_later_write_without_a_copy_is_not_undone_by_an_older_copy() {
    for (level, n) in [
        (RaidLevel::Linear, 2),
        (RaidLevel::Raid0, 2),
        (RaidLevel::Raid1, 2),
    ] {
        let what = format!("{level} x{n}");
        let (m, pool, mut model) = filled(level, n);
        let vol = pool.volume("a", None).unwrap();
        let small = pattern(1024, 3);
        vol.write_at(&small, 196 * 1024 + 3072).unwrap();
        vol.flush().unwrap();
        // Over the same block, not aligned, most of a 16 KiB chunk and
        // into the next one.
        let (at, large) = (196 * 1024 + 2048, pattern(16896, 4));
        vol.write_at(&large, at).unwrap();
        vol.flush().unwrap();
        model[at as usize..at as usize + large.len()].copy_from_slice(&large);
        let stats = pool.flush_stats();
        assert!(stats.journaled_blocks >= 1, "{what}: {stats:?}");
        drop(vol);
        drop(pool);
        let (_m, pool) = power_cut(&m).unwrap();
        let mut got = vec![0u8; 8 * BLK];
        pool.volume("a", None)
            .unwrap()
            .read_at(&mut got, 192 * 1024)
            .unwrap_or_else(|e| panic!("{what}: a flushed write reads as an error: {e}"));
        assert!(
            got == model[192 * 1024..192 * 1024 + 8 * BLK],
            "{what}: an older journaled copy went over a flushed write"
        );
        let r = pool.check(false).unwrap();
        assert!(r.clean(), "{what}: {r:?}");
    }
}

/// Large overwrites of committed data (256 KiB over several chunks, and
/// one not aligned to 4 KiB) go in place once a round names their blocks,
/// as small ones do, but leave no copy in the log (before, anything over
/// 32 KiB was written afresh, a chunk not covered whole read and copied). A lost write in such an overwrite, then
/// a power cut: every block reads as flushed or as written, never other
/// bytes.
#[test]
fn large_overwrites_go_in_place_under_intents() {
    for (level, n) in [(RaidLevel::Linear, 2), (RaidLevel::Raid0, 2)] {
        for liar in 0..n {
            let what = format!("{level} x{n}, member {liar} lies");
            let (m, pool, mut model) = filled(level, n);
            let vol = pool.volume("a", None).unwrap();
            let big = pattern(256 << 10, 7);
            vol.write_at(&big, 512 << 10).unwrap();
            let odd = pattern((100 << 10) + 1000, 8);
            let at = (1 << 20) + 1000;
            vol.write_at(&odd, at as u64).unwrap();
            vol.flush().unwrap();
            model[512 << 10..768 << 10].copy_from_slice(&big);
            model[at..at + odd.len()].copy_from_slice(&odd);
            let stats = pool.flush_stats();
            // Every piece in place after a round (the build before wrote
            // all but the small edge piece afresh: 1 named).
            assert!(stats.named_writes >= 8, "{what}: {stats:?}");
            assert_eq!(stats.unnamed_writes, 0, "{what}: {stats:?}");
            // Copies only of the unaligned write's small edge pieces, not
            // of the 90 blocks written.
            assert!(
                stats.journaled_blocks <= 4,
                "{what}: copies in the log: {stats:?}"
            );
            // One member loses its next write, inside an unflushed large
            // overwrite; then the power goes.
            m.plans[liar].lose_writes(1);
            let newer = pattern(256 << 10, 9);
            vol.write_at(&newer, 512 << 10).unwrap();
            drop(vol);
            drop(pool);
            let (_m, pool) = power_cut(&m).unwrap();
            let v = pool.volume("a", None).unwrap();
            for b in 0..VOL / BLK {
                let (s, e) = (b * BLK, (b + 1) * BLK);
                let in_newer = (512 << 10..768 << 10).contains(&s);
                let mut got = vec![0u8; BLK];
                match v.read_at(&mut got, s as u64) {
                    Ok(()) if got == model[s..e] => {}
                    Ok(()) if in_newer && got == newer[s - (512 << 10)..e - (512 << 10)] => {}
                    Ok(()) => panic!("{what}: block {b} is neither flushed nor written data"),
                    Err(e) => assert!(in_newer, "{what}: flushed block {b} lost: {e}"),
                }
            }
        }
    }
}

/// Intents for consecutive blocks go into the log as one run (6 bytes a
/// block, FORMAT.md "Flush log", type 9) rather than an entry each (23
/// bytes): the log holds several times as many large overwrites before
/// it fills and sends them to fresh chunks. A power cut after them: each
/// piece's data reached the media when the next round flushed the
/// members, and only the replayed runs say its new checksum, so a run lost
/// or misread would turn those blocks into read errors.
#[test]
fn runs_of_intents_let_the_log_name_more_large_overwrites() {
    for (level, n) in [(RaidLevel::Linear, 2), (RaidLevel::Raid0, 2)] {
        let what = format!("{level} x{n}");
        let (m, pool, mut model) = filled(level, n);
        let log_blocks = pool.info().metadata_log / BLK as u64 - 1;
        let vol = pool.volume("a", None).unwrap();
        // Chunk-sized pieces, one round each. A pair of log blocks holds
        // 4,032 bytes of them: as entries (23 bytes a block with its first
        // sector's tag) or as runs (19 bytes and 6 a block). Twice what
        // fits as entries.
        let piece = pool.info().chunk_size as usize;
        let k = piece / BLK;
        let (as_entries, as_runs) = (4032 / (23 * k), 4032 / (19 + 6 * k));
        assert!(as_runs > 2 * as_entries, "{what}: {k} blocks a chunk");
        let pieces = (log_blocks / 2) as usize * as_entries * 2;
        // Every version each block held: none was flushed, so after the
        // cut a block may hold any of them (the rounds of intents make
        // only the log durable, not the data written before them).
        let mut versions: Vec<Vec<Vec<u8>>> = (0..VOL / BLK)
            .map(|b| vec![model[b * BLK..(b + 1) * BLK].to_vec()])
            .collect();
        for i in 0..pieces {
            let at = (i * piece) % VOL;
            let data = pattern(piece, 10 + i as u64);
            vol.write_at(&data, at as u64).unwrap();
            model[at..at + piece].copy_from_slice(&data);
            for b in at / BLK..(at + piece) / BLK {
                versions[b].push(model[b * BLK..(b + 1) * BLK].to_vec());
            }
        }
        let stats = pool.flush_stats();
        assert_eq!(
            stats.unnamed_writes, 0,
            "{what}: {pieces} pieces with {log_blocks} log blocks: {stats:?}"
        );
        assert_eq!(stats.named_writes, pieces as u64, "{what}: {stats:?}");
        drop(vol);
        drop(pool);
        let (_m, pool) = power_cut(&m).unwrap();
        let v = pool.volume("a", None).unwrap();
        let mut got = vec![0u8; VOL];
        v.read_at(&mut got, 0)
            .unwrap_or_else(|e| panic!("{what}: a block reads as an error after the cut: {e}"));
        // Each block reads as one of its versions (a write in flight
        // kept, or its home write lost with the cache), never other bytes.
        for (b, v) in versions.iter().enumerate() {
            let now = &got[b * BLK..(b + 1) * BLK];
            assert!(
                v.iter().any(|x| x == now),
                "{what}: block {b} reads bytes no write gave it"
            );
        }
        assert!(pool.check(false).unwrap().clean(), "{what}");
    }
}

/// A round of intents makes its record durable by one durable write of
/// the record's block on each metadata copy (`RWF_DSYNC` on files), not
/// by flushing the members: on disks, a member flush writes back every
/// dirty page of the member first. The write it names stays volatile
/// until a client flush, and a power cut before one keeps either version.
#[test]
fn a_round_of_intents_writes_its_record_durably_and_flushes_no_member() {
    for (level, n) in [(RaidLevel::Linear, 2), (RaidLevel::Raid0, 2)] {
        let what = format!("{level} x{n}");
        let (m, pool, model) = filled(level, n);
        for p in &m.plans {
            p.reset_counts();
        }
        let data = pattern(BLK, 7);
        pool.volume("a", None)
            .unwrap()
            .write_at(&data, 5 * BLK as u64)
            .unwrap();
        let stats = pool.flush_stats();
        assert_eq!(
            (stats.intent_rounds, stats.named_writes),
            (1, 1),
            "{what}: {stats:?}"
        );
        for (i, p) in m.plans.iter().enumerate() {
            assert_eq!(p.flushes_seen(), 0, "{what}: member {i} was flushed");
            assert_eq!(
                p.durable_writes_seen(),
                1,
                "{what}: member {i}'s copy of the record"
            );
        }
        drop(pool);
        let (_m, pool) = power_cut(&m).unwrap();
        let mut got = vec![0u8; BLK];
        pool.volume("a", None)
            .unwrap()
            .read_at(&mut got, 5 * BLK as u64)
            .unwrap_or_else(|e| panic!("{what}: the block reads as an error: {e}"));
        assert!(
            got == data || got[..] == model[5 * BLK..6 * BLK],
            "{what}: the block holds neither version"
        );
        assert!(pool.check(false).unwrap().clean(), "{what}");
    }
}

/// Lies and power cuts together, at random, on linear x2, raid0 x2 and
/// raid1 x2 (two metadata copies), one member lying between cuts: every
/// block reads as what was last flushed, a version written since, or an
/// error; never other bytes.
#[test]
fn lies_then_power_cuts_never_return_other_bytes() {
    let cases: u64 = std::env::var("VPOOL_FAULT_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let mut journaled = 0;
    let levels = [
        (RaidLevel::Linear, 2),
        (RaidLevel::Raid0, 2),
        (RaidLevel::Raid1, 2),
    ];
    for (level, n) in levels {
        for case in 0..cases {
            journaled += campaign(level, n, case, 120);
        }
    }
    assert!(journaled > 0, "no write went through the journal");
}

fn campaign(level: RaidLevel, n: usize, case: u64, steps: u64) -> u64 {
    let mut rng = Rng(0x51A7_E0F1_2345_6789 ^ (case + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let (mut m, mut pool, mut model) = filled(level, n);
    let mut durable = model.clone();
    let mut since: std::collections::HashMap<usize, Vec<Vec<u8>>> = Default::default();
    let mut unknown = vec![false; VOL / BLK];
    let mut log = Vec::new();
    let mut journaled = 0;
    let mut lied = false;
    // One member lies between power cuts: two metadata copies cannot
    // outvote lies on both.
    let mut liar = rng.below(n as u64) as usize;
    for step in 0..steps {
        let what = format!("{level} x{n} case {case} step {step} after {log:?}");
        match rng.below(10) {
            0..=5 => {
                let off = rng.below((VOL - 140_000) as u64) as usize / 512 * 512;
                // Small writes (a copy in the log), and large ones over
                // several chunks (in place under intents, no copy).
                let most = match rng.below(8) {
                    0 => 256,
                    1 | 2 => 64,
                    _ => 16,
                };
                let len = (1 + rng.below(most) as usize) * 512;
                let data = pattern(len, rng.next());
                let r = pool
                    .volume("a", None)
                    .and_then(|v| v.write_at(&data, off as u64));
                if r.is_ok() {
                    model[off..off + len].copy_from_slice(&data);
                }
                for b in off / BLK..(off + len).div_ceil(BLK) {
                    if r.is_err() {
                        unknown[b] = true;
                    }
                    let v = model[b * BLK..(b + 1) * BLK].to_vec();
                    since.entry(b).or_default().push(v);
                }
            }
            6 => {
                let off = rng.below((VOL - 32768) as u64) as usize / BLK * BLK;
                let mut got = vec![0u8; 32768];
                if pool
                    .volume("a", None)
                    .unwrap()
                    .read_at(&mut got, off as u64)
                    .is_ok()
                {
                    for (i, b) in (off / BLK..off / BLK + 8).enumerate() {
                        assert!(
                            unknown[b]
                                || got[i * BLK..(i + 1) * BLK] == model[b * BLK..(b + 1) * BLK],
                            "{what}: block {b} reads wrong data in service"
                        );
                    }
                }
            }
            7 => {
                if pool.volume("a", None).and_then(|v| v.flush()).is_ok() {
                    durable.copy_from_slice(&model);
                    since.clear();
                }
            }
            8 => {
                log.push(lie(&mut rng, &m.plans[liar]));
                lied = true;
            }
            _ => {
                journaled += pool.flush_stats().journaled_blocks;
                log.push("power cut");
                liar = rng.below(n as u64) as usize;
                drop(pool);
                let (m2, p2) = match power_cut(&m) {
                    Ok(x) => x,
                    // Both metadata copies struck: an error, never a pool
                    // that serves other bytes.
                    Err(_) => return journaled,
                };
                (m, pool) = (m2, p2);
                let v = pool.volume("a", None).unwrap();
                for (b, unknown) in unknown.iter_mut().enumerate() {
                    let (s, e) = (b * BLK, (b + 1) * BLK);
                    let mut got = vec![0u8; BLK];
                    match v.read_at(&mut got, s as u64) {
                        Ok(()) if got == durable[s..e] => {}
                        Ok(())
                            if since
                                .get(&b)
                                .is_some_and(|v| torn_of(&got, &durable[s..e], v)) => {}
                        Ok(()) => assert!(
                            *unknown,
                            "{what}: block {b} is neither flushed nor written data"
                        ),
                        // With no lie since the last cut, a power cut
                        // alone costs no flushed block.
                        Err(e) => {
                            assert!(
                                lied || *unknown || since.contains_key(&b),
                                "{what}: block {b} reads as an error with no lie since the last power cut: {e}"
                            );
                            *unknown = true;
                        }
                    }
                    model[s..e].copy_from_slice(&got);
                }
                durable.copy_from_slice(&model);
                since.clear();
                lied = false;
            }
        }
    }
    journaled + pool.flush_stats().journaled_blocks
}
