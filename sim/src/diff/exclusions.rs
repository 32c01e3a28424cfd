//! The one list of known, accepted differences between this machine's kernel (as the kvm
//! backend runs it) and the simulator's `v6.18-pvm` profile.
//!
//! An entry is allowed only where the two differ for a reason outside guest_memfd (the PVM
//! backend, the kernel configuration, the runner's own process), never to hide a simulator
//! bug. Every entry says why. A diverging line that an entry matches is counted under that
//! entry's name and reported on its own line; it does not count as a divergence, and the
//! comparison goes on with the next line.

use std::collections::HashMap;

use crate::script::{Op, Program};

/// A diverging line, as the exclusions see it.
#[derive(Debug, Clone, Copy)]
pub struct DivergingLine<'a> {
    /// The line's operation.
    pub op: &'a Op,
    /// The reference's result.
    pub reference: &'a str,
    /// The simulator's result.
    pub sim: &'a str,
    /// Whether the line is a `load`, `store` or `madvise` that reaches past the end of the
    /// page-rounded mapping it names, or names a mapping already unmapped
    /// ([`beyond_mapping`]).
    pub beyond_mapping: bool,
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

/// Every accepted difference.
pub const EXCLUSIONS: &[Exclusion] = &[Exclusion {
    name: "beyond-mapping",
    reason: "a host access past the end of its mapping, or through a mapping already unmapped, lands \
             on whatever the address-space layout puts there: on the kvm arm that is the runner's own \
             process (its allocations, earlier scripts' holes, and the ranges it keeps reserved after a \
             script's munmap), not the fresh process the simulator models",
    matches: |line| line.beyond_mapping,
}];

/// The entry that accepts this diverging line, if any.
pub fn find(line: &DivergingLine<'_>) -> Option<&'static Exclusion> {
    EXCLUSIONS.iter().find(|exclusion| (exclusion.matches)(line))
}

/// For every line of `program`: whether it is a `load`, `store` or `madvise` whose range
/// reaches past the end of the page-rounded length its mapping was asked for, or whose
/// mapping was unmapped by an earlier line.
pub fn beyond_mapping(program: &Program) -> Vec<bool> {
    const PAGE: u64 = 4096;
    // name -> (page-rounded length, still mapped)
    let mut maps: HashMap<&str, (u64, bool)> = HashMap::new();
    program
        .lines
        .iter()
        .map(|line| {
            // A name whose mapping was unmapped is not beyond it: its range stays out of every
            // later placement on both backends, so the access meets a hole on both.
            let access = |map: &str, offset: u64, len: u64| match maps.get(map) {
                Some(&(map_len, _)) => offset.checked_add(len).is_none_or(|end| end > map_len),
                None => true,
            };
            let beyond = match &line.op {
                Op::Load { map, offset, len } => access(map, *offset, *len),
                Op::Store { map, offset, bytes } => access(map, *offset, bytes.len() as u64),
                Op::Madvise { map, offset, len, .. } => access(map, *offset, *len),
                _ => false,
            };
            match (&line.op, &line.binding) {
                (Op::Mmap { len, .. }, Some(name)) => {
                    maps.insert(name, (len.checked_next_multiple_of(PAGE).unwrap_or(u64::MAX), true));
                }
                (Op::Munmap { map }, _) => {
                    if let Some(entry) = maps.get_mut(map.as_str()) {
                        entry.1 = false;
                    }
                }
                _ => {}
            }
            beyond
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::script::parse;

    #[test]
    fn accesses_past_the_end_are_beyond_their_mapping_and_stale_names_are_not() {
        let text = "vm = create_vm\ng = create_guest_memfd vm size=8K flags=MMAP|INIT_SHARED\nm = mmap g len=1\n\
                    load m offset=4095 len=1\nload m offset=4095 len=2\nstore m offset=4096 bytes=00\n\
                    madvise m offset=0 len=8K advice=DONTNEED\nmunmap m\nload m offset=0 len=1\n";
        let program = parse("t.gms", text).expect("parses");
        assert_eq!(beyond_mapping(&program), [false, false, false, false, true, true, true, false, false]);
    }
}
