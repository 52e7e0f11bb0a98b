//! The independent copies of a range of array bytes, for checking data
//! against its checksum and repairing the copy that is wrong: each mirror of
//! a raid1 array; on raid5 the data unit as stored and as reconstructed from
//! the other members of its row. Linear and raid0 arrays have one copy.
//! During a restripe (`pool add`) a range has the copies of the layout
//! that serves it (the new one below the restripe's position, the old one
//! above); during other layout changes only the normal read is used.

use super::{Array, ArrayState, Transition, TransitionKind, View};
use crate::device::DeviceRef;
use crate::raid::health::{Dir, Fault};
use crate::raid::parity::xor_into;
use crate::raid::RaidLevel;
use std::io;
use std::sync::atomic::Ordering;

/// One way to read a range: as member `member` stores it (`direct`), or as
/// the other members of its raid5 row say it should be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Copy {
    pub member: usize,
    pub direct: bool,
}

fn io_err(f: Fault) -> io::Error {
    match f {
        Fault::MemberFailed => io::Error::other("member failed during the read"),
        Fault::Io(e) => e,
    }
}

impl Array {
    /// The copies of `[offset, offset + len)`, which must lie in one
    /// stripe unit: during a restripe, those of the layout that serves it.
    /// Empty during other layout changes, except for a raid1 mirror being
    /// filled or rebuilt: it is listed where it is in sync already (below
    /// the transition's position), the others always; past a rebuild's
    /// position a device being replaced in service is the member's copy.
    pub fn copies(&self, offset: u64, len: usize) -> Vec<Copy> {
        let st = self.state.read();
        let filling = match &st.transition {
            None
            | Some(Transition {
                kind: TransitionKind::Restripe { .. },
                ..
            }) => None,
            Some(Transition {
                kind: TransitionKind::Resync { member } | TransitionKind::Rebuild { member },
                pos,
            }) if st.geo.level == RaidLevel::Raid1 => {
                (offset + len as u64 > *pos).then_some(*member)
            }
            Some(_) => return Vec::new(),
        };
        let mut with_old = Vec::new();
        let Some(v) = self.serving(&st, &mut with_old, offset, len) else {
            return Vec::new();
        };
        // Past a rebuild's position the device being replaced in service
        // holds the member's copy, in sync.
        let filling = filling.filter(|&m| v.shadow != Some(m));
        match v.geo.level {
            RaidLevel::Raid1 => (0..v.members.len())
                .filter(|&m| v.dev(m).is_some() && Some(m) != filling)
                .map(|member| Copy {
                    member,
                    direct: true,
                })
                .collect(),
            _ => {
                let ext = v.geo.map(offset, len as u64);
                let [e] = ext.as_slice() else {
                    return Vec::new();
                };
                let mut out = Vec::new();
                if v.dev(e.member).is_some() {
                    out.push(Copy {
                        member: e.member,
                        direct: true,
                    });
                }
                let others_present = (0..v.members.len())
                    .filter(|&m| m != e.member)
                    .all(|m| v.dev(m).is_some());
                if v.geo.level == RaidLevel::Raid5 && others_present {
                    out.push(Copy {
                        member: e.member,
                        direct: false,
                    });
                }
                out
            }
        }
    }

    /// Read `buf.len()` bytes at array `offset` from one copy.
    pub fn read_copy(&self, c: Copy, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let st = self.state.read();
        let mut with_old = Vec::new();
        let v = self
            .serving(&st, &mut with_old, offset, buf.len())
            .ok_or_else(in_flux)?;
        let moff = member_offset(&v, c.member, offset, buf.len())?;
        if c.direct {
            let dev = v
                .dev(c.member)
                .ok_or_else(|| io::Error::other("member missing"))?;
            v.io(c.member, dev, Dir::Read, Some(moff), || {
                dev.read_at(buf, moff)
            })
            .map_err(io_err)
        } else {
            v.reconstruct(c.member, moff, buf).map_err(io_err)
        }
    }

    /// Write good bytes over a direct copy that was found bad. Parity is
    /// left alone: it already agrees with the good data.
    pub fn rewrite_copy(&self, c: Copy, offset: u64, good: &[u8]) -> io::Result<()> {
        self.unflushed.store(true, Ordering::Release);
        let st = self.state.read();
        let mut with_old = Vec::new();
        let v = self
            .serving(&st, &mut with_old, offset, good.len())
            .ok_or_else(in_flux)?;
        let moff = member_offset(&v, c.member, offset, good.len())?;
        let dev = v
            .dev(c.member)
            .ok_or_else(|| io::Error::other("member missing"))?;
        let _guard = (v.geo.level == RaidLevel::Raid5)
            .then(|| v.lock((moff - v.geo.data_start) / v.geo.stripe_unit));
        v.io(c.member, dev, Dir::Write, Some(moff), || {
            dev.write_at(good, moff)
        })
        .map_err(io_err)
    }

    /// RAID5: compare the parity of the rows under `[offset, offset+len)`
    /// (whole stripe rows) with the XOR of their data units; with `repair`,
    /// rewrite parity that disagrees. Returns the 4 KiB parity blocks that
    /// disagreed (and were rewritten), with their parity member. A member
    /// that fails during the check ends it early, degraded, without error.
    /// Other levels: nothing to do.
    pub fn check_parity(
        &self,
        offset: u64,
        len: u64,
        repair: bool,
    ) -> io::Result<Vec<(usize, u64)>> {
        if repair {
            self.unflushed.store(true, Ordering::Release);
        }
        let st = self.state.read();
        if st.geo.level != RaidLevel::Raid5 || st.members.iter().any(|m| m.is_none()) {
            return Ok(Vec::new());
        }
        // During a rebuild (the crash resync runs then too) the rows below
        // its position are whole on every member, the new one included;
        // past it, only a device being replaced in service makes a row
        // whole. Other layout changes are not checked.
        let (pos, old) = match &st.transition {
            None => (u64::MAX, None),
            Some(Transition {
                kind: TransitionKind::Rebuild { member },
                pos,
            }) => (*pos, self.serving_old().map(|d| (*member, d))),
            Some(_) => return Ok(Vec::new()),
        };
        let v_in = self.view(&st.geo, &st.members, None);
        let with_old: Vec<Option<DeviceRef>> = match &old {
            Some((k, d)) => {
                let mut m = st.members.clone();
                m[*k] = Some(d.clone());
                m
            }
            None => Vec::new(),
        };
        let v_old = old.as_ref().map(|(k, _)| View {
            shadow: Some(*k),
            ..self.view(&st.geo, &with_old, None)
        });
        let whole = |v: &View| (0..st.members.len()).all(|m| v.dev(m).is_some());
        let su = st.geo.stripe_unit;
        let width = st.geo.stripe_width();
        let mut bad = Vec::new();
        let (mut calc, mut disk) = (vec![0u8; su as usize], vec![0u8; su as usize]);
        let mut unit = vec![0u8; su as usize];
        for row in offset / width..(offset + len).div_ceil(width) {
            let v = match (row + 1) * width <= pos {
                true => &v_in,
                false => match &v_old {
                    Some(v) => v,
                    None => continue,
                },
            };
            if !whole(v) {
                continue;
            }
            let moff = st.geo.data_start + row * su;
            let _guard = v.lock(row);
            let checked = (|| -> Result<(), Fault> {
                calc.fill(0);
                for d in 0..st.geo.data_members() {
                    let m = st.geo.data_member(row, d);
                    read_member(v, m, moff, &mut unit)?;
                    xor_into(&mut calc, &unit);
                }
                let pm = st.geo.parity_member(row);
                read_member(v, pm, moff, &mut disk)?;
                if repair && calc != disk {
                    let dev = v.dev(pm).ok_or(Fault::MemberFailed)?;
                    v.io(pm, dev, Dir::Write, Some(moff), || {
                        dev.write_at(&calc, moff)
                    })?;
                }
                for (i, (a, b)) in calc.chunks(4096).zip(disk.chunks(4096)).enumerate() {
                    if a != b {
                        bad.push((pm, moff + i as u64 * 4096));
                    }
                }
                Ok(())
            })();
            match checked {
                Ok(()) => {}
                // A member failed under the check (its read or the parity
                // rewrite): the array is degraded now, parity has nothing
                // left to be checked against, and the rebuild rewrites it.
                // The rows checked (and rewritten) so far are the answer.
                Err(Fault::MemberFailed) => return Ok(bad),
                Err(Fault::Io(e)) => return Err(e),
            }
        }
        Ok(bad)
    }

    /// The member holding array byte `offset` (the first mirror on raid1).
    pub fn member_at(&self, offset: u64) -> usize {
        let st = self.state.read();
        match st.geo.level {
            RaidLevel::Raid1 => 0,
            _ => st.geo.map(offset, 1).first().map_or(0, |e| e.member),
        }
    }

    /// Is the array in a layout change (copies are not compared then)?
    pub fn in_transition(&self) -> bool {
        self.state.read().transition.is_some()
    }
}

/// A copy asked for across a restripe's position (`copies` lists none).
fn in_flux() -> io::Error {
    io::Error::other("a copy across a restripe's position")
}

impl Array {
    /// The view that serves `[offset, offset + len)` now: the array's
    /// layout, or during a restripe the old one (over the old members)
    /// where the restripe has not reached, or during a rebuild of a member
    /// replaced in service its old device (in `with_old`) past the rebuild's
    /// position. None: the range straddles the restripe's position.
    fn serving<'a>(
        &'a self,
        st: &'a ArrayState,
        with_old: &'a mut Vec<Option<DeviceRef>>,
        offset: u64,
        len: usize,
    ) -> Option<View<'a>> {
        match &st.transition {
            Some(Transition {
                kind: TransitionKind::Rebuild { member },
                pos,
            }) if offset >= *pos => {
                let Some(old) = self.serving_old() else {
                    return Some(self.view(&st.geo, &st.members, None));
                };
                *with_old = st.members.clone();
                with_old[*member] = Some(old);
                let members: &'a Vec<Option<DeviceRef>> = with_old;
                Some(View {
                    shadow: Some(*member),
                    ..self.view(&st.geo, members, None)
                })
            }
            Some(Transition {
                kind: TransitionKind::Restripe { old },
                pos,
            }) => {
                if offset + len as u64 <= *pos {
                    Some(self.view(&st.geo, &st.members, None))
                } else if offset >= *pos {
                    Some(self.view(old, &st.members[..old.members()], None))
                } else {
                    None
                }
            }
            _ => Some(self.view(&st.geo, &st.members, None)),
        }
    }
}

fn read_member(v: &View, m: usize, moff: u64, buf: &mut [u8]) -> Result<(), Fault> {
    let dev = v.dev(m).ok_or(Fault::MemberFailed)?;
    v.io(m, dev, Dir::Read, Some(moff), || dev.read_at(buf, moff))
}

/// Where `member` holds array bytes `[offset, offset+len)`.
fn member_offset(v: &View, member: usize, offset: u64, len: usize) -> io::Result<u64> {
    if v.geo.level == RaidLevel::Raid1 {
        return Ok(v.geo.data_start + offset);
    }
    match v.geo.map(offset, len as u64).as_slice() {
        [e] if e.member == member => Ok(e.offset),
        _ => Err(io::Error::other(
            "a checked range must lie in one stripe unit",
        )),
    }
}
