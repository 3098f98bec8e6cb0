//! # Workloads: which operation on which key
//!
//! The YCSB core mixes, named as YCSB names them, plus a write-only mix and the shopping
//! cart:
//!
//! | workload     | operations                                                          |
//! |--------------|---------------------------------------------------------------------|
//! | `a`          | 50% read, 50% update (a blind put of a new value)                   |
//! | `b`          | 95% read, 5% update                                                 |
//! | `c`          | 100% read                                                           |
//! | `write-only` | 100% update                                                         |
//! | `cart`       | 40% add an item, 20% change a quantity, 10% remove an item, 30% show the cart |
//! | `cart-updates` | the cart mix without shows: 57% add, 29% change a quantity, 14% remove (what an update costs as carts grow, without the reads of whole carts) |
//!
//! Keys are chosen **uniformly** or by a **zipfian** law (YCSB's default, theta 0.99: a few
//! keys get most requests). The zipfian ranks are scrambled by a hash so the hot keys are not
//! neighbours and spread over nodes, as YCSB's "scrambled zipfian" does. The zipfian draw
//! follows Gray et al., "Quickly generating billion-record synthetic databases" (1994): one
//! O(n) pass computes zeta(n), then each draw is O(1).
//!
//! Randomness is a seeded SplitMix64, so a run's sequence of operations is reproducible.

use std::fmt;

/// Most keys a workload may address.
pub const KEYS_MAX: u64 = 100_000_000;

/// Distinct items a cart workload puts in a cart.
pub const CART_ITEMS: u64 = 64;

pub use crate::rng::Rng;

/// How keys are chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Distribution {
    /// Every key equally likely.
    Uniform,
    /// A few keys get most requests (YCSB's scrambled zipfian).
    Zipfian,
}

impl Distribution {
    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Self::Uniform => "uniform",
            Self::Zipfian => "zipfian",
        }
    }
}

/// Chooses key indexes in [0, keys).
#[derive(Clone, Debug)]
pub struct KeyChooser {
    keys: u64,
    zipf: Option<Zipf>,
}

#[derive(Clone, Debug)]
struct Zipf {
    theta: f64,
    alpha: f64,
    zeta_n: f64,
    eta: f64,
}

impl KeyChooser {
    /// A chooser over `keys` keys (1 to [`KEYS_MAX`]); `theta` (0 < theta < 1) is used by the
    /// zipfian law.
    pub fn new(keys: u64, distribution: Distribution, theta: f64) -> Result<Self, String> {
        if keys == 0 || keys > KEYS_MAX {
            return Err(format!("keys must be 1 to {KEYS_MAX}"));
        }
        let zipf = match distribution {
            Distribution::Uniform => None,
            Distribution::Zipfian => {
                if !(theta > 0.0 && theta < 1.0) {
                    return Err(format!("zipf theta must be between 0 and 1, not {theta}"));
                }
                let zeta = |n: u64| (1..=n).map(|i| 1.0 / (i as f64).powf(theta)).sum::<f64>();
                let zeta_n = zeta(keys);
                let zeta_2 = zeta(2.min(keys));
                let eta = (1.0 - (2.0 / keys as f64).powf(1.0 - theta)) / (1.0 - zeta_2 / zeta_n);
                Some(Zipf { theta, alpha: 1.0 / (1.0 - theta), zeta_n, eta })
            }
        };
        Ok(Self { keys, zipf })
    }

    /// Keys addressed.
    pub fn keys(&self) -> u64 {
        self.keys
    }

    /// The next key index.
    pub fn next(&self, rng: &mut Rng) -> u64 {
        match &self.zipf {
            None => rng.below(self.keys),
            Some(z) => {
                let rank = z.rank(self.keys, rng.next_f64());
                // Scramble the rank so hot keys are spread over the key space.
                scramble(rank) % self.keys
            }
        }
    }
}

impl Zipf {
    /// The zipfian rank (0 is the hottest) for a uniform draw `u` in [0, 1).
    fn rank(&self, n: u64, u: f64) -> u64 {
        let uz = u * self.zeta_n;
        if uz < 1.0 {
            return 0;
        }
        if uz < 1.0 + 0.5f64.powf(self.theta) {
            return 1.min(n - 1);
        }
        let rank = (n as f64 * (self.eta * u - self.eta + 1.0).powf(self.alpha)) as u64;
        rank.min(n - 1)
    }
}

/// A 64-bit mix (the SplitMix64 finalizer), a bijection on u64.
fn scramble(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The key bytes of key index `i`: YCSB's `user` followed by 12 digits.
pub fn key_name(i: u64) -> Vec<u8> {
    format!("user{i:012}").into_bytes()
}

/// The key bytes of cart `i`.
pub fn cart_name(i: u64) -> Vec<u8> {
    format!("cart{i:012}").into_bytes()
}

/// The item id of item `i` of the catalogue.
pub fn item_name(i: u64) -> Vec<u8> {
    format!("sku-{i:05}").into_bytes()
}

/// A workload mix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Workload {
    /// YCSB A: 50% read, 50% update.
    A,
    /// YCSB B: 95% read, 5% update.
    B,
    /// YCSB C: 100% read.
    C,
    /// 100% update.
    WriteOnly,
    /// Shopping carts: add, change quantity, remove, show.
    Cart,
    /// Shopping carts, updates only: add, change quantity, remove.
    CartUpdates,
}

impl Workload {
    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Self::A => "a",
            Self::B => "b",
            Self::C => "c",
            Self::WriteOnly => "write-only",
            Self::Cart => "cart",
            Self::CartUpdates => "cart-updates",
        }
    }

    /// Whether this workload writes cart operations (and needs a `cart` bucket).
    pub fn is_cart(self) -> bool {
        matches!(self, Self::Cart | Self::CartUpdates)
    }

    /// The next request: an operation and its key index.
    pub fn next(self, keys: &KeyChooser, rng: &mut Rng) -> Request {
        let key = keys.next(rng);
        let dice = rng.below(100);
        match self {
            Self::A | Self::B | Self::C | Self::WriteOnly => {
                let read_percent = match self {
                    Self::A => 50,
                    Self::B => 95,
                    Self::C => 100,
                    _ => 0,
                };
                if dice < read_percent {
                    Request::Read { key }
                } else {
                    Request::Update { key }
                }
            }
            Self::Cart | Self::CartUpdates => {
                let item = rng.below(CART_ITEMS);
                // The updates-only mix keeps the cart mix's proportions of updates (4:2:1).
                let dice = match self {
                    Self::CartUpdates => dice * 70 / 100,
                    _ => dice,
                };
                match dice {
                    0..40 => {
                        Request::CartAdd { cart: key, item, quantity: 1 + rng.below(3) as i64 }
                    }
                    40..60 => Request::CartSetQuantity {
                        cart: key,
                        item,
                        quantity: 1 + rng.below(5) as i64,
                    },
                    60..70 => Request::CartRemove { cart: key, item },
                    _ => Request::CartShow { cart: key },
                }
            }
        }
    }
}

impl fmt::Display for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One request of a workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    /// Read key `key`.
    Read {
        /// Key index.
        key: u64,
    },
    /// Put a new value under key `key`.
    Update {
        /// Key index.
        key: u64,
    },
    /// Add `quantity` of `item` to `cart`.
    CartAdd {
        /// Cart index.
        cart: u64,
        /// Item index.
        item: u64,
        /// Quantity added (> 0).
        quantity: i64,
    },
    /// Set `item`'s quantity in `cart`, with the cart's last seen context.
    CartSetQuantity {
        /// Cart index.
        cart: u64,
        /// Item index.
        item: u64,
        /// New quantity (> 0).
        quantity: i64,
    },
    /// Remove `item` from `cart`, with the cart's last seen context.
    CartRemove {
        /// Cart index.
        cart: u64,
        /// Item index.
        item: u64,
    },
    /// Read `cart`.
    CartShow {
        /// Cart index.
        cart: u64,
    },
}

impl Request {
    /// The operation's name in reports.
    pub fn op(&self) -> &'static str {
        match self {
            Self::Read { .. } => "read",
            Self::Update { .. } => "update",
            Self::CartAdd { .. } => "cart-add",
            Self::CartSetQuantity { .. } => "cart-set-quantity",
            Self::CartRemove { .. } => "cart-remove",
            Self::CartShow { .. } => "cart-show",
        }
    }

    /// The key index it addresses.
    pub fn key_index(&self) -> u64 {
        match *self {
            Self::Read { key } | Self::Update { key } => key,
            Self::CartAdd { cart, .. }
            | Self::CartSetQuantity { cart, .. }
            | Self::CartRemove { cart, .. }
            | Self::CartShow { cart } => cart,
        }
    }

    /// The key bytes it addresses.
    pub fn key(&self) -> Vec<u8> {
        match self {
            Self::Read { .. } | Self::Update { .. } => key_name(self.key_index()),
            _ => cart_name(self.key_index()),
        }
    }
}

/// The name of an error kind in reports (snake case, as in the wire schema's `ErrorKind`).
pub fn error_kind(e: &crate::Error) -> &'static str {
    e.kind_name()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The mixes come out in their stated proportions (within 2 points over 20 000 draws).
    #[test]
    fn mixes_have_their_proportions() {
        let keys = KeyChooser::new(1000, Distribution::Uniform, 0.99).unwrap();
        let mut rng = Rng::new(7);
        for (workload, read_percent) in [
            (Workload::A, 50.0),
            (Workload::B, 95.0),
            (Workload::C, 100.0),
            (Workload::WriteOnly, 0.0),
        ] {
            let reads = (0..20_000)
                .filter(|_| matches!(workload.next(&keys, &mut rng), Request::Read { .. }))
                .count();
            let percent = reads as f64 / 200.0;
            assert!((percent - read_percent).abs() < 2.0, "{workload}: {percent}% reads");
        }
        let shows = (0..20_000)
            .filter(|_| matches!(Workload::Cart.next(&keys, &mut rng), Request::CartShow { .. }))
            .count();
        assert!((shows as f64 / 200.0 - 30.0).abs() < 2.0, "{shows} shows");
        // The updates-only cart mix: no show, adds, set-quantities and removes as 4:2:1.
        let mut counts = [0usize; 3];
        for _ in 0..21_000 {
            match Workload::CartUpdates.next(&keys, &mut rng) {
                Request::CartAdd { .. } => counts[0] += 1,
                Request::CartSetQuantity { .. } => counts[1] += 1,
                Request::CartRemove { .. } => counts[2] += 1,
                other => panic!("cart-updates made {other:?}"),
            }
        }
        for (count, expected) in counts.iter().zip([12_000.0, 6_000.0, 3_000.0]) {
            assert!((*count as f64 - expected).abs() < 420.0, "{counts:?}");
        }
    }

    /// Uniform keys cover the key space evenly; zipfian keys stay in range and concentrate
    /// on a few hot keys.
    #[test]
    fn key_distributions() {
        let mut rng = Rng::new(1);
        let uniform = KeyChooser::new(100, Distribution::Uniform, 0.99).unwrap();
        let mut counts = [0u32; 100];
        for _ in 0..100_000 {
            counts[uniform.next(&mut rng) as usize] += 1;
        }
        assert!(counts.iter().all(|&c| (700..1300).contains(&c)), "{counts:?}");

        let zipf = KeyChooser::new(10_000, Distribution::Zipfian, 0.99).unwrap();
        let mut counts = vec![0u32; 10_000];
        for _ in 0..100_000 {
            counts[zipf.next(&mut rng) as usize] += 1;
        }
        counts.sort_unstable_by(|a, b| b.cmp(a));
        let top_ten: u32 = counts[..10].iter().sum();
        // Under theta 0.99 the ten hottest of 10 000 keys get about 30% of the draws.
        assert!(top_ten > 20_000, "top ten keys got {top_ten} of 100 000");
        assert!(counts[0] > 5_000, "hottest key got {}", counts[0]);
    }

    /// Bad parameters are refused.
    #[test]
    fn chooser_checks() {
        assert!(KeyChooser::new(0, Distribution::Uniform, 0.5).is_err());
        assert!(KeyChooser::new(10, Distribution::Zipfian, 1.0).is_err());
        assert!(
            KeyChooser::new(1, Distribution::Zipfian, 0.99).unwrap().next(&mut Rng::new(3)) == 0
        );
    }
}
