//! Pinned files: versions kept resident whatever the eviction policy says, up to a share of the
//! pool.
//!
//! Why a cap: a pool that is all pinned cannot take a single miss (nothing can be evicted to make
//! room), so a quarter always stays for everything else. How a pin holds: its `Source` is kept
//! here, so its store file has a holder and is never evicted (`Store::evict_one` takes only
//! entries nobody holds), and the engine keeps its arena chunks out of the policy (`Control::Pin`).
//! A pin holds the version it pinned; after the source changes, pin again.

use std::collections::HashMap;
use std::sync::Arc;

use crate::engine::Source;

/// Pins may take this share of the pool: numerator / denominator.
pub const CAP: (u64, u64) = (3, 4);

pub struct Pinned {
    pub path: String,
    pub size: u64,
    /// The version held, once its warm opened it.
    pub src: Option<Arc<Source>>,
}

pub struct Pins {
    by_object: HashMap<(u64, u64), Pinned>,
    pub cap_bytes: u64,
}

impl Pins {
    pub fn new(pool_bytes: u64) -> Pins {
        Pins {
            by_object: HashMap::new(),
            cap_bytes: pool_bytes / CAP.1 * CAP.0,
        }
    }

    pub fn total_bytes(&self) -> u64 {
        self.by_object.values().map(|p| p.size).sum()
    }

    pub fn is_pinned(&self, object: (u64, u64)) -> bool {
        self.by_object.contains_key(&object)
    }

    pub fn count(&self) -> usize {
        self.by_object.len()
    }

    /// Reserves pins for these objects (dev, ino) with their sizes, all or none: Err says by how
    /// much the cap would be exceeded, in numbers.
    pub fn reserve(&mut self, files: &[((u64, u64), String, u64)]) -> Result<(), String> {
        let new: u64 = files
            .iter()
            .filter(|(o, _, _)| !self.by_object.contains_key(o))
            .map(|(_, _, size)| size)
            .sum();
        let pinned = self.total_bytes();
        if pinned + new > self.cap_bytes {
            return Err(format!(
                "pin refused: {} asked + {} already pinned = {} exceeds the pin cap of {} ({}/{} of the pool)",
                crate::size::human(new),
                crate::size::human(pinned),
                crate::size::human(pinned + new),
                crate::size::human(self.cap_bytes),
                CAP.0,
                CAP.1
            ));
        }
        for (object, path, size) in files {
            self.by_object.entry(*object).or_insert_with(|| Pinned {
                path: path.clone(),
                size: *size,
                src: None,
            });
        }
        Ok(())
    }

    /// Records the version a reserved pin holds; returns the one it replaces (another version).
    pub fn hold(&mut self, object: (u64, u64), src: Arc<Source>) -> Option<Arc<Source>> {
        let p = self.by_object.get_mut(&object)?;
        match &p.src {
            Some(old) if old.file_id == src.file_id => None,
            _ => p.src.replace(src),
        }
    }

    pub fn remove(&mut self, object: (u64, u64)) -> Option<Pinned> {
        self.by_object.remove(&object)
    }

    /// The cache ids of the versions held (for reports).
    pub fn held(&self) -> Vec<(String, Arc<Source>)> {
        self.by_object
            .values()
            .filter_map(|p| Some((p.path.clone(), p.src.clone()?)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_beyond_the_cap_are_refused_with_numbers() {
        let mut p = Pins::new(1 << 30);
        assert_eq!(p.cap_bytes, 768 << 20);
        p.reserve(&[((1, 1), "a".into(), 500 << 20)]).expect("fits");
        // The same object again costs nothing more.
        p.reserve(&[((1, 1), "a".into(), 500 << 20)])
            .expect("already pinned");
        let err = p
            .reserve(&[((1, 2), "b".into(), 300 << 20)])
            .expect_err("over the cap");
        assert!(err.contains("300") && err.contains("768"), "{err}");
        assert_eq!(p.count(), 1);
        assert!(p.remove((1, 1)).is_some());
        assert_eq!(p.total_bytes(), 0);
    }
}
