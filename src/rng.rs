//! # A seeded random source
//!
//! SplitMix64 (Steele, Lea and Flood; the seeding generator of xoshiro): a 64-bit counter
//! stepped by the golden-ratio constant and mixed. Small, fast, and the same numbers for the
//! same seed on every machine, which the benchmark's workload, the simulation and the actor
//! epochs need. Not for cryptography.

/// A seeded generator (SplitMix64). Not for cryptography.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in [0, n), for n > 0.
    pub fn below(&mut self, n: u64) -> u64 {
        debug_assert!(n > 0);
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }
}

/// One well-mixed 64-bit value from `seed`: the first output of [`Rng::new`]`(seed)`.
pub fn splitmix(seed: u64) -> u64 {
    Rng::new(seed).next_u64()
}
