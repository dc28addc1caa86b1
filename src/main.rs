//! The `sluice` binary: everything happens in `sluice::cli`.

fn main() -> std::process::ExitCode {
    few_malloc_arenas();
    sluice::cli::main()
}

/// Caps glibc's malloc arenas at two, before any thread starts.
///
/// glibc gives threads their own arenas (up to eight per core), and memory freed in one stays
/// there. A sidecar's cycles run on tokio's workers, blocking threads and sled's threads in
/// turn, so each arena grows to the peak of what passed through it: in the soak (1,000
/// recipes) RSS reached 100 MB with the default and stayed near 60 MB with two arenas, at no
/// measurable CPU cost (docs/BENCHMARKS.md). `MALLOC_ARENA_MAX` in the environment wins.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn few_malloc_arenas() {
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: `mallopt` only sets a parameter of the allocator; called first thing in
        // `main`, before any other thread exists. A refusal (0) leaves glibc's default.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn few_malloc_arenas() {}
