//! How the process's allocator treats the large, short-lived buffers of a forward pass.
//!
//! A prompt's forward pass allocates and frees activations of several MB per layer (a 512-token
//! prompt's MLP activations are about 10 MB). glibc's malloc serves blocks that large with fresh
//! `mmap`s and gives them back on free, so every layer of every prompt faulted in and zeroed new
//! pages: page clearing and faults took 4-6% of a prefill (perf). [`retain_freed_memory`] raises the
//! `mmap` threshold to its maximum and keeps freed memory for reuse instead; the cost is that the
//! process keeps the high-water mark of its activations resident.

/// Makes glibc's malloc serve blocks up to 32 MB from its heap and keep up to 1 GB of freed heap.
/// Returns whether both settings took (always false off glibc, where nothing is changed).
pub fn retain_freed_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only adjusts allocator parameters; 32 MB is glibc's largest allowed
        // mmap threshold on 64-bit targets.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20) == 1 && libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30) == 1
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    /// Whether glibc serves the block at `p` with its own mmap: bit 1 (IS_MMAPPED) of the chunk's
    /// size word, just before the block.
    fn mmapped(p: *const u8) -> bool {
        // SAFETY: every glibc malloc chunk has its size word right before the user pointer.
        unsafe { *(p as *const usize).sub(1) & 2 != 0 }
    }

    #[test]
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn settings_take_and_large_blocks_come_from_the_heap() {
        // (Not checked before the setting: glibc moves its threshold up by itself once mmapped
        // blocks are freed, so that would depend on what other tests did first.)
        assert!(super::retain_freed_memory());
        let after = std::hint::black_box(vec![1u8; 16 << 20]);
        assert!(!mmapped(after.as_ptr()), "a 16 MB block was mmapped");
        let huge = std::hint::black_box(vec![1u8; 64 << 20]);
        assert!(mmapped(huge.as_ptr()), "blocks over the 32 MB ceiling are still mmapped");
    }
}
