//! Keeping pgwarden's resident memory close to what it uses.
//!
//! glibc gives every thread that allocates its own arena, and a block freed into one
//! arena serves only that arena: the tokio workers and the blocking pool that move
//! large buffers (WAL segments, backup parts) between them leave each arena holding
//! its high-water mark. Two arenas and a trim after a large burst keep the process
//! near what it holds (measured by `make bench`, section backup).

/// Caps glibc's malloc arenas at two. Called before the runtime starts its threads.
pub fn limit_arenas() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only changes the allocator's parameters; it is called before
    // any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// Returns the heap's free memory to the system, after a burst such as a backup.
pub fn trim() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only releases free memory; it is thread-safe in glibc.
    unsafe {
        libc::malloc_trim(0);
    }
}
