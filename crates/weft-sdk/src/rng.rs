//! The deterministic generator behind `ctx.random()` and `ctx.uuid()`.
//!
//! Seeded from the run id with FNV-1a and stepped with SplitMix64, both
//! written out here rather than taken from a crate: a replay must draw the
//! same numbers as the first execution even after the SDK's dependencies are
//! upgraded (`rand::rngs::StdRng` promises no stable output across versions).

/// SplitMix64 (Steele, Lea, Flood 2014): tiny, fast, and good enough for ids.
#[derive(Clone, Debug)]
pub(crate) struct DeterministicRng {
    state: u64,
}

impl DeterministicRng {
    pub(crate) fn from_run_id(run_id: &str) -> Self {
        DeterministicRng { state: fnv1a(run_id.as_bytes()) }
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A version-4 UUID built from two draws.
    pub(crate) fn next_uuid(&mut self) -> uuid::Uuid {
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&self.next_u64().to_le_bytes());
        bytes[8..].copy_from_slice(&self.next_u64().to_le_bytes());
        uuid::Builder::from_random_bytes(bytes).into_uuid()
    }
}

/// FNV-1a, 64 bit.
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01B3);
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_run_id_same_numbers() {
        let mut a = DeterministicRng::from_run_id("run-1");
        let mut b = DeterministicRng::from_run_id("run-1");
        let mut c = DeterministicRng::from_run_id("run-2");
        let first = a.next_u64();
        assert_eq!(first, b.next_u64());
        assert_ne!(first, c.next_u64());
        assert_eq!(a.next_uuid(), b.next_uuid());
        assert_eq!(a.next_uuid().get_version_num(), 4);
    }

    #[test]
    fn output_is_stable_across_versions() {
        // Pinned: changing these numbers breaks replay of every running workflow.
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        let mut rng = DeterministicRng { state: 0 };
        assert_eq!(rng.next_u64(), 0xE220_A839_7B1D_CDAF);
    }
}
