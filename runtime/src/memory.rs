//! Giving memory back after a load. Building a snapshot parses YAML and JSON and prepares
//! every binding: with 10,000 routes that peaks near 100 MiB of short-lived heap, which
//! glibc's allocator keeps (measured: 123 MiB RSS at rest after loading, 49 MiB after
//! `malloc_trim`). So after each start and reload the gateway asks the allocator to
//! return free pages to the system; it costs a few milliseconds on the control thread,
//! not on a request's (a worker allocating meanwhile may wait briefly for the arena
//! `malloc_trim` holds, once per reload).

/// Free heap below which a trim is not worth its cost: a reload of a small config leaves
/// a few MiB, which the next reload reuses anyway.
const WORTH_TRIMMING: usize = 16 << 20;

/// Return the allocator's free memory to the system (glibc; elsewhere nothing to do),
/// when it holds more than [`WORTH_TRIMMING`] free. `malloc_trim` walks every arena
/// with its lock held, so a worker allocating meanwhile waits: measured under load, a
/// trim after every reload of a small config was a visible share of the requests' p99
/// during reloads, for no memory back. `mallinfo2` (glibc 2.33 and later; Debian 12 has
/// 2.36) only counts the arenas' free lists, far cheaper than the trim it decides on.
pub fn give_back() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        #[repr(C)]
        #[allow(dead_code)] // glibc's layout; only `fordblks` is read
        struct MallInfo2 {
            arena: usize,
            ordblks: usize,
            smblks: usize,
            hblks: usize,
            hblkhd: usize,
            usmblks: usize,
            fsmblks: usize,
            uordblks: usize,
            fordblks: usize,
            keepcost: usize,
        }
        #[allow(unsafe_code)]
        // SAFETY: glibc's `mallinfo2` (2.33+) only reads the allocator's counters and
        // returns them by value, in this layout; `malloc_trim` takes a byte count to
        // keep and only releases memory the allocator holds free; both are thread-safe
        // (they lock each arena).
        unsafe {
            unsafe extern "C" {
                fn mallinfo2() -> MallInfo2;
                fn malloc_trim(pad: usize) -> i32;
            }
            let info = mallinfo2();
            if info.fordblks >= WORTH_TRIMMING {
                malloc_trim(0);
            }
        }
    }
}
