//! The one list of known, accepted differences between this machine's kernel (as the kvm
//! backend runs it) and the simulator's `v6.18-pvm` profile.
//!
//! An entry is allowed only where the two differ for a reason outside guest_memfd (the PVM
//! backend, the kernel configuration, the runner's own process), never to hide a simulator
//! bug. Every entry says why. A diverging line that an entry matches is counted under that
//! entry's name and reported on its own line; it does not count as a divergence, and the
//! comparison goes on with the next line.

use crate::script::Op;

/// A diverging line, as the exclusions see it.
#[derive(Debug, Clone, Copy)]
pub struct DivergingLine<'a> {
    /// The line's operation.
    pub op: &'a Op,
    /// The reference's result.
    pub reference: &'a str,
    /// The simulator's result.
    pub sim: &'a str,
}

/// One accepted difference.
#[derive(Debug)]
pub struct Exclusion {
    /// A short name, printed with the count of lines it matched.
    pub name: &'static str,
    /// Why the difference is outside guest_memfd.
    pub reason: &'static str,
    /// Whether a diverging line is this difference.
    pub matches: fn(&DivergingLine<'_>) -> bool,
}

/// Every accepted difference: none.
///
/// The last entry, `beyond-mapping` (a host access past the end of its mapping, or through a
/// mapping already unmapped, landed on whatever the runner's address space held there), went
/// when both backends started keeping the layout the script format promises: a range a script
/// unmapped is not handed out again during the script, and every mapping has a guard gap of
/// [`crate::backends::sim::GUARD_GAP`] above it, so such an access meets a hole on both.
pub const EXCLUSIONS: &[Exclusion] = &[];

/// The entry that accepts this diverging line, if any.
pub fn find(line: &DivergingLine<'_>) -> Option<&'static Exclusion> {
    EXCLUSIONS.iter().find(|exclusion| (exclusion.matches)(line))
}
