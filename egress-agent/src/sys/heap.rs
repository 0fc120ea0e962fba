//! glibc's heap, kept to what the plan in force needs.
//!
//! An apply builds large short-lived structures (the parsed policies, the
//! compiled plan, the map image) on the apply thread; glibc keeps the
//! freed pages in its arenas, so without a trim the agent's steady RSS
//! stays near its peak for good. Every thread that allocates may also get
//! an arena of its own (up to 8 per core), each keeping its own freed
//! pages.

/// Caps glibc's arenas at two: the agent allocates much only on its apply
/// thread, and the main arena serves the others. Call before threads
/// start. A no-op with another C library.
pub fn limit_arenas() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets an allocator parameter.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// Returns the free pages of every arena to the kernel (after an apply).
/// A no-op with another C library.
pub fn trim() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}
