//! The project's random number generator, shared by every command that draws from a seed.
//!
//! `gmem-sim run` draws each thread's operation stream from it and `gmem-sim diff` expands each
//! case's seed with it into the seed of proptest's generator (which then generates and shrinks
//! the case), so both commands are reproducible from the one `--seed` they print, and a seed
//! means the same thing wherever it is given. splitmix64 is used because it is small, fast,
//! well mixed from any state (a seed of 0 or 1 is as good as any other) and needs no
//! dependency; the streams of one run are told apart by mixing a stream number into the seed.

/// The 64-bit golden ratio: splitmix64's state increment, and the odd stride that spreads
/// related seeds (a diff run's case seeds) over the whole state space.
pub const GOLDEN_GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

/// splitmix64: a small, fast, well-mixed generator (no dependency).
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator for stream `stream` of `seed`.
    pub fn new(seed: u64, stream: u64) -> Rng {
        let mut rng = Rng(seed ^ stream.wrapping_mul(0xd1b5_4a32_d192_ed03));
        rng.next_u64();
        rng
    }

    /// A generator whose state is exactly `state` (the first output mixes `state` plus the
    /// golden-ratio increment).
    pub fn from_state(state: u64) -> Rng {
        Rng(state)
    }

    /// The next 64 bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(GOLDEN_GAMMA);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// Fills `bytes` with the next outputs, each little-endian (the last one cut short if
    /// `bytes` is not a multiple of 8 long).
    pub fn fill_bytes(&mut self, bytes: &mut [u8]) {
        for chunk in bytes.chunks_mut(8) {
            chunk.copy_from_slice(&self.next_u64().to_le_bytes()[..chunk.len()]);
        }
    }
}

/// A seed for a command given none: the clock and the process id (printed by the command, so
/// the run can be repeated).
pub fn fresh_seed() -> u64 {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    (nanos as u64) ^ (u64::from(std::process::id()) << 32)
}

#[cfg(test)]
mod tests {
    use super::Rng;

    #[test]
    fn splitmix64_from_a_zero_state_gives_the_reference_outputs() {
        // The published splitmix64 sequence for seed 0.
        let mut rng = Rng::from_state(0);
        assert_eq!(rng.next_u64(), 0xe220_a839_7b1d_cdaf);
        assert_eq!(rng.next_u64(), 0x6e78_9e6a_a1b9_65f4);
    }

    #[test]
    fn fill_bytes_is_the_outputs_in_little_endian() {
        let mut bytes = [0u8; 12];
        Rng::from_state(7).fill_bytes(&mut bytes);
        let mut rng = Rng::from_state(7);
        assert_eq!(bytes[..8], rng.next_u64().to_le_bytes());
        assert_eq!(bytes[8..], rng.next_u64().to_le_bytes()[..4]);
    }

    #[test]
    fn below_stays_below() {
        let mut rng = Rng::new(1, 2);
        assert!((0..1000).all(|_| rng.below(7) < 7));
    }
}
