//! Giving freed heap memory back to the kernel after a large reconcile.
//!
//! A reconcile of thousands of peers allocates a few MiB for a moment (the desired state, the
//! kernel's dump, the plan, the status file's JSON) and frees it again; glibc's malloc keeps
//! such freed pages in its arenas, so the agent's resident memory would stay at the peak of
//! its largest reconcile. `malloc_trim(0)` returns every free page of every arena to the
//! kernel (`madvise(MADV_DONTNEED)`), in well under a millisecond for the agent's heap.

/// Returns the heap's free pages to the kernel (glibc only; elsewhere nothing to do).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub fn release_freed() {
    // SAFETY: malloc_trim only walks and trims glibc's own arenas; it takes no pointer of
    // ours, and glibc locks each arena while trimming it.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Returns the heap's free pages to the kernel (glibc only; elsewhere nothing to do).
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn release_freed() {}
