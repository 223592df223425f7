//! Helpers shared by the fuzz targets in `fuzz_targets/`.

/// A small deterministic generator (xorshift64*), so chunk boundaries and other choices come
/// from the fuzz input itself and a crash reproduces from its input alone.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }

    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Takes the first `n` bytes of `data` as a little-endian seed (missing bytes are 0) and
/// returns it with the rest.
pub fn seed(data: &[u8], n: usize) -> (u64, &[u8]) {
    let n = n.min(data.len()).min(8);
    let mut s = 0u64;
    for (i, b) in data[..n].iter().enumerate() {
        s |= u64::from(*b) << (8 * i);
    }
    (s, &data[n..])
}

/// Cuts `data` into pieces whose lengths (1..=`max`, sometimes 0) come from `seed`. Seed 0
/// gives the whole input as one piece.
pub fn pieces(data: &[u8], seed: u64, max: usize) -> Vec<&[u8]> {
    if seed == 0 {
        return vec![data];
    }
    let mut rng = Rng::new(seed);
    let mut out = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        let n = if rng.below(16) == 0 {
            0
        } else {
            1 + rng.below(max.max(1))
        };
        let n = n.min(rest.len());
        out.push(&rest[..n]);
        rest = &rest[n..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_cover_the_input() {
        let data: Vec<u8> = (0..=255).collect();
        for s in 0..50 {
            assert_eq!(pieces(&data, s, 7).concat(), data);
        }
    }
}
