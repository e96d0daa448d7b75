//! Giving memory back after a load. Building a snapshot parses YAML and JSON and prepares
//! every binding: with 10,000 routes that peaks near 100 MiB of short-lived heap, which
//! an allocator may keep (measured with glibc's: 123 MiB RSS at rest after loading, 49
//! MiB after `malloc_trim`). So after each start and reload the gateway asks the
//! allocator to return free pages to the system, on the control thread, where the load
//! ran, not on a request's.
//!
//! The binary's allocator is mimalloc 2 (`main.rs`), with two settings:
//! - Arenas are committed as they are used, not all at once: an arena committed eagerly
//!   (mimalloc's default on Linux) keeps the pages it purges in RSS, and the quickstart
//!   sat 20 to 23 MiB higher at rest. The standard library allocates before `main`,
//!   which reserves the first arena, so this is mimalloc's compiled-in default
//!   (`MI_DEFAULT_ARENA_EAGER_COMMIT=0` in `.cargo/config.toml`).
//! - Until the gateway is serving, freed pages are purged at once, on whichever thread
//!   frees them ([`at_start`]; the start's garbage is spread over the control thread, the
//!   workers and the lanes). From the first [`give_back`] on, purging waits mimalloc's
//!   default 10 ms, so a request never waits on it, and `mi_collect(true)` collects the
//!   control thread's heap after each load.
//!
//! The library itself (its unit tests, a program embedding it) keeps the system's
//! allocator, glibc's on Linux, which is trimmed as before.

/// mimalloc 2's option numbers (`mi_option_e` in its `mimalloc.h`; the `v2` feature pins
/// the line, and a unit test reads their defaults back).
#[cfg(test)]
const ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;
const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
/// mimalloc's default purge delay, in milliseconds.
const PURGE_DELAY_SERVING: std::ffi::c_long = 10;

/// mimalloc's setting for a start: called first thing in `main`, before any thread.
pub fn at_start() {
    #[allow(unsafe_code)]
    // SAFETY: `mi_option_set` stores a number in mimalloc's option table; 0 is a valid
    // purge delay (purge at once).
    unsafe {
        libmimalloc_sys::mi_option_set(PURGE_DELAY, 0);
    }
}

/// Free heap below which a trim is not worth its cost: a reload of a small config leaves
/// a few MiB, which the next reload reuses anyway.
const WORTH_TRIMMING: usize = 16 << 20;

/// Return the allocator's free memory to the system: mimalloc's, and glibc's when it
/// holds more than [`WORTH_TRIMMING`] free (with mimalloc as the global allocator it holds
/// only what C code allocated). `malloc_trim` walks every arena
/// with its lock held, so a worker allocating meanwhile waits: measured under load, a
/// trim after every reload of a small config was a visible share of the requests' p99
/// during reloads, for no memory back. `mallinfo2` (glibc 2.33 and later; Debian 12 has
/// 2.36) only counts the arenas' free lists, far cheaper than the trim it decides on.
pub fn give_back() {
    #[allow(unsafe_code)]
    // SAFETY: `mi_collect` takes no pointers: it walks the calling thread's own heap and
    // releases the pages it holds free (with another global allocator that heap is empty
    // and the call returns at once); `mi_option_set` stores a number.
    unsafe {
        libmimalloc_sys::mi_collect(true);
        libmimalloc_sys::mi_option_set(PURGE_DELAY, PURGE_DELAY_SERVING);
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The option numbers are mimalloc 2's, and the arenas' default is the one compiled
    /// in: read back, the purge delay has mimalloc's documented default and eager commit
    /// of arenas is off (mimalloc's own default is 2; another line's numbering would name
    /// other options). The unit tests run on the system's allocator; the options are
    /// mimalloc's all the same.
    #[test]
    fn the_option_numbers_name_the_options_meant() {
        #[allow(unsafe_code)]
        // SAFETY: `mi_option_get` reads a number from mimalloc's option table.
        let (eager, delay) = unsafe {
            (
                libmimalloc_sys::mi_option_get(ARENA_EAGER_COMMIT),
                libmimalloc_sys::mi_option_get(PURGE_DELAY),
            )
        };
        assert_eq!(
            eager, 0,
            "arena_eager_commit: 0, compiled in (.cargo/config.toml), not mimalloc's 2"
        );
        assert_eq!(delay, PURGE_DELAY_SERVING, "purge_delay defaults to 10 ms");
    }
}
