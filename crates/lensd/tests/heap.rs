//! The heap settings `lensd serve` makes: blocks of 1 MiB and more are mapped on their own, so
//! freeing one gives its memory back instead of leaving it in an arena. A process of its own,
//! because the allocator's settings are the whole process's.

use lensd::runtime::{heap_usage, map_large_blocks};

const BLOCK: usize = 4 << 20;

#[test]
fn freed_large_blocks_are_not_kept_by_the_allocator() {
    map_large_blocks();
    let free_before = heap_usage().expect("glibc counts its heap").free_bytes;
    // glibc's own rule would raise its threshold past the first freed block and serve the
    // later ones from an arena that keeps them.
    for round in 0..4 {
        let block = vec![round as u8 + 1; BLOCK];
        let held = heap_usage().unwrap();
        assert!(held.in_use_bytes >= BLOCK as u64, "{held:?}");
        std::hint::black_box(&block);
        drop(block);
        let free = heap_usage().unwrap().free_bytes;
        assert!(
            free < free_before + BLOCK as u64 / 2,
            "round {round}: {free} bytes free, {free_before} before the blocks"
        );
    }
}
