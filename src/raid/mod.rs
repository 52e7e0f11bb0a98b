//! Array layer (may use device and below): combines members into one linear
//! address space according to a RAID level, and mirrors the metadata area
//! across up to three members whatever the data level. The thin layer above
//! sees only array offsets.

mod array;
mod geometry;
pub mod health;
mod mirror;
pub mod parity;

pub use array::{
    members_before_shrink, Array, ArrayState, Copy, LeavingMember, Transition, TransitionKind,
    Vouch,
};
pub use geometry::{Geometry, RaidLevel};
pub use mirror::{MetaMirror, Validator};
