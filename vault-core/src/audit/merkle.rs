//! The audit log as a Merkle tree (RFC 6962, as restated in RFC 9162 §2.1): the tree hash,
//! inclusion and consistency proofs, and their verification.
//!
//! Written here rather than taken from `ct-merkle` or `tlog_tiles` (the choice is in
//! `docs/ARCHITECTURE.md`): the hashing is ring's SHA-256, which the vault already trusts, the
//! whole of it is these few functions, and it is checked against the Certificate Transparency
//! test vectors and, in the vaultctl tests, against an independent checker.

use ring::digest::{SHA256, digest};

/// A SHA-256 value: a leaf hash, a node or a tree head.
pub type Hash = [u8; 32];

fn sha256(parts: &[&[u8]]) -> Hash {
    let mut b = Vec::with_capacity(parts.iter().map(|p| p.len()).sum());
    for p in parts {
        b.extend_from_slice(p);
    }
    let d = digest(&SHA256, &b);
    let mut h = [0u8; 32];
    h.copy_from_slice(d.as_ref());
    h
}

/// The hash of a leaf: SHA-256(0x00 || data).
pub(crate) fn leaf_hash(data: &[u8]) -> Hash {
    sha256(&[&[0u8], data])
}

/// The hash of an inner node: SHA-256(0x01 || left || right).
fn node_hash(left: &Hash, right: &Hash) -> Hash {
    sha256(&[&[1u8], left, right])
}

/// The largest power of two smaller than `n` (n > 1).
fn split(n: u64) -> u64 {
    debug_assert!(n > 1);
    1 << (63 - (n - 1).leading_zeros())
}

/// A tree over every leaf hash, with each level of complete subtrees kept, so the hash of any
/// subtree a proof needs is read or made from at most log n stored nodes (2n hashes in memory).
pub(crate) struct Tree {
    levels: Vec<Vec<Hash>>,
}

impl Tree {
    pub(crate) fn new(leaves: Vec<Hash>) -> Tree {
        let mut levels = vec![leaves];
        while levels[levels.len() - 1].len() > 1 {
            let below = &levels[levels.len() - 1];
            let up = below
                .chunks_exact(2)
                .map(|p| node_hash(&p[0], &p[1]))
                .collect();
            levels.push(up);
        }
        Tree { levels }
    }

    pub(crate) fn size(&self) -> u64 {
        self.levels[0].len() as u64
    }

    /// MTH(D[start:end]) for the ranges RFC 6962's recursion visits: `start` is a multiple of
    /// the largest power of two not above `end - start`.
    fn subtree(&self, start: u64, end: u64) -> Hash {
        let n = end - start;
        if n == 0 {
            return sha256(&[]);
        }
        if n.is_power_of_two() && start.is_multiple_of(n) {
            let level = n.trailing_zeros() as usize;
            return self.levels[level][(start >> level) as usize];
        }
        let k = split(n);
        node_hash(
            &self.subtree(start, start + k),
            &self.subtree(start + k, end),
        )
    }

    /// The tree head of the first `size` leaves.
    pub(crate) fn root_at(&self, size: u64) -> Hash {
        self.subtree(0, size.min(self.size()))
    }

    /// The inclusion proof of leaf `index` in the tree of every leaf (RFC 9162 §2.1.3.1).
    pub(crate) fn inclusion(&self, index: u64) -> Vec<Hash> {
        let mut proof = Vec::new();
        self.path(index, 0, self.size(), &mut proof);
        proof
    }

    fn path(&self, m: u64, start: u64, end: u64, out: &mut Vec<Hash>) {
        let n = end - start;
        if n <= 1 {
            return;
        }
        let k = split(n);
        if m < k {
            self.path(m, start, start + k, out);
            out.push(self.subtree(start + k, end));
        } else {
            self.path(m - k, start + k, end, out);
            out.push(self.subtree(start, start + k));
        }
    }

    /// The consistency proof from the tree of the first `old` leaves to the tree of every leaf
    /// (RFC 9162 §2.1.4.1); empty when `old` is 0 or the whole tree.
    pub(crate) fn consistency(&self, old: u64) -> Vec<Hash> {
        let mut proof = Vec::new();
        if old > 0 && old < self.size() {
            self.subproof(old, 0, self.size(), true, &mut proof);
        }
        proof
    }

    fn subproof(&self, m: u64, start: u64, end: u64, whole: bool, out: &mut Vec<Hash>) {
        let n = end - start;
        if m == n {
            if !whole {
                out.push(self.subtree(start, end));
            }
            return;
        }
        let k = split(n);
        if m <= k {
            self.subproof(m, start, start + k, whole, out);
            out.push(self.subtree(start + k, end));
        } else {
            self.subproof(m - k, start + k, end, false, out);
            out.push(self.subtree(start, start + k));
        }
    }
}

/// Whether `proof` shows the leaf with hash `leaf` at `index` in the tree of `size` leaves whose
/// head is `root` (RFC 9162 §2.1.3.2).
pub(crate) fn verify_inclusion(
    index: u64,
    size: u64,
    leaf: &Hash,
    proof: &[Hash],
    root: &Hash,
) -> bool {
    if index >= size {
        return false;
    }
    let (mut f, mut s) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if s == 0 {
            return false;
        }
        if f & 1 == 1 || f == s {
            r = node_hash(p, &r);
            while f & 1 == 0 && f != 0 {
                f >>= 1;
                s >>= 1;
            }
        } else {
            r = node_hash(&r, p);
        }
        f >>= 1;
        s >>= 1;
    }
    s == 0 && r == *root
}

/// Whether `proof` shows that the tree of `old` leaves with head `old_root` is a prefix of the
/// tree of `new` leaves with head `new_root` (RFC 9162 §2.1.4.2). Every tree extends the empty
/// one (whose head is SHA-256 of nothing); a tree is consistent with itself when the heads are
/// equal and the proof empty.
pub(crate) fn verify_consistency(
    old: u64,
    new: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> bool {
    if old > new {
        return false;
    }
    if old == 0 {
        return proof.is_empty() && *old_root == sha256(&[]);
    }
    if old == new {
        return proof.is_empty() && old_root == new_root;
    }
    if proof.is_empty() {
        return false;
    }
    let mut path: Vec<&Hash> = Vec::with_capacity(proof.len() + 1);
    if old.is_power_of_two() {
        path.push(old_root);
    }
    path.extend(proof.iter());
    let (mut f, mut s) = (old - 1, new - 1);
    while f & 1 == 1 {
        f >>= 1;
        s >>= 1;
    }
    let (mut fr, mut sr) = (*path[0], *path[0]);
    for c in &path[1..] {
        if s == 0 {
            return false;
        }
        if f & 1 == 1 || f == s {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            while f & 1 == 0 && f != 0 {
                f >>= 1;
                s >>= 1;
            }
        } else {
            sr = node_hash(&sr, c);
        }
        f >>= 1;
        s >>= 1;
    }
    fr == *old_root && sr == *new_root && s == 0
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The leaves of the Certificate Transparency test vectors.
    fn ct_leaves() -> Vec<Vec<u8>> {
        [
            "",
            "00",
            "10",
            "2021",
            "3031",
            "40414243",
            "5051525354555657",
            "606162636465666768696a6b6c6d6e6f",
        ]
        .iter()
        .map(|h| hex::decode(h).unwrap())
        .collect()
    }

    fn tree_of(n: usize) -> Tree {
        Tree::new(ct_leaves()[..n].iter().map(|d| leaf_hash(d)).collect())
    }

    #[test]
    fn the_tree_heads_of_the_certificate_transparency_vectors() {
        let roots = [
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
            "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
            "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
            "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
            "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
        ];
        let t = tree_of(8);
        for (i, want) in roots.iter().enumerate() {
            assert_eq!(
                hex::encode(t.root_at(i as u64 + 1)),
                *want,
                "size {}",
                i + 1
            );
            assert_eq!(hex::encode(tree_of(i + 1).root_at(i as u64 + 1)), *want);
        }
        assert_eq!(
            hex::encode(Tree::new(vec![]).root_at(0)),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn the_inclusion_proofs_of_the_certificate_transparency_vectors() {
        let t = tree_of(8);
        let hexes = |p: Vec<Hash>| p.iter().map(hex::encode).collect::<Vec<_>>();
        assert_eq!(
            hexes(t.inclusion(0)),
            [
                "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
            ]
        );
        assert_eq!(
            hexes(t.inclusion(5)),
            [
                "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            ]
        );
    }

    #[test]
    fn the_consistency_proofs_of_the_certificate_transparency_vectors() {
        let t = tree_of(8);
        let hexes = |p: Vec<Hash>| p.iter().map(hex::encode).collect::<Vec<_>>();
        assert_eq!(
            hexes(t.consistency(1)),
            [
                "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
            ]
        );
        assert_eq!(
            hexes(t.consistency(6)),
            [
                "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
                "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            ]
        );
    }

    fn leaves(n: usize) -> Vec<Hash> {
        (0..n)
            .map(|i| leaf_hash(&(i as u64).to_be_bytes()))
            .collect()
    }

    proptest! {
        #[test]
        fn every_inclusion_proof_checks_and_a_changed_one_does_not(
            n in 1usize..300, pick in any::<prop::sample::Index>(), flip in any::<prop::sample::Index>()
        ) {
            let t = Tree::new(leaves(n));
            let root = t.root_at(n as u64);
            let i = pick.index(n);
            let leaf = leaf_hash(&(i as u64).to_be_bytes());
            let proof = t.inclusion(i as u64);
            prop_assert!(verify_inclusion(i as u64, n as u64, &leaf, &proof, &root));
            // Another leaf or another index is refused. (The size is bound by the signed head: some
            // proofs have the same shape in a tree one larger.)
            prop_assert!(!verify_inclusion(i as u64, n as u64, &leaf_hash(b"x"), &proof, &root));
            if n > 1 {
                let j = (i + 1) % n;
                prop_assert!(!verify_inclusion(j as u64, n as u64, &leaf, &proof, &root));
            }
            if !proof.is_empty() {
                let mut bad = proof.clone();
                let k = flip.index(bad.len());
                bad[k][0] ^= 1;
                prop_assert!(!verify_inclusion(i as u64, n as u64, &leaf, &bad, &root));
                prop_assert!(!verify_inclusion(i as u64, n as u64, &leaf, &proof[1..], &root));
            }
        }

        #[test]
        fn every_consistency_proof_checks_and_a_rewritten_prefix_does_not(
            n in 1usize..300, pick in any::<prop::sample::Index>(), flip in any::<prop::sample::Index>()
        ) {
            let t = Tree::new(leaves(n));
            let m = pick.index(n) as u64 + 1;
            let (old, new) = (t.root_at(m), t.root_at(n as u64));
            let proof = t.consistency(m);
            prop_assert!(verify_consistency(m, n as u64, &old, &new, &proof));
            // A prefix whose leaf changed has another head: the proof does not join them.
            let mut other = leaves(n);
            other[(m - 1) as usize] = leaf_hash(b"rewritten");
            let rewritten = Tree::new(other).root_at(m);
            prop_assert!(!verify_consistency(m, n as u64, &rewritten, &new, &proof));
            if !proof.is_empty() {
                let mut bad = proof.clone();
                let k = flip.index(bad.len());
                bad[k][31] ^= 0x80;
                prop_assert!(!verify_consistency(m, n as u64, &old, &new, &bad));
            }
        }
    }
}
