//! Giving memory back after a load. Building a snapshot parses YAML and JSON and prepares
//! every binding: with 10,000 routes that peaks near 100 MiB of short-lived heap, which
//! glibc's allocator keeps (measured: 123 MiB RSS at rest after loading, 49 MiB after
//! `malloc_trim`). So after each start and reload the gateway asks the allocator to
//! return free pages to the system; it costs a few milliseconds on the control thread,
//! not on a request's (a worker allocating meanwhile may wait briefly for the arena
//! `malloc_trim` holds, once per reload).

/// Return the allocator's free memory to the system (glibc; elsewhere nothing to do).
pub fn give_back() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        #[allow(unsafe_code)]
        // SAFETY: glibc's `malloc_trim` takes a byte count to keep and only releases
        // memory the allocator holds free; it is thread-safe (it locks each arena).
        unsafe {
            unsafe extern "C" {
                fn malloc_trim(pad: usize) -> i32;
            }
            malloc_trim(0);
        }
    }
}
