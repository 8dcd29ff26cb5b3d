//! Process-wide OS settings: memory settings that the embedded engines'
//! speed depends on, thread priority, the open-file limit.

/// Opts this process out of transparent huge pages (`PR_SET_THP_DISABLE`).
///
/// With THP, the first touch of a fresh 2 MiB region is a huge-page fault:
/// the kernel zeroes the whole page, and with `defrag` set to `madvise` (the
/// Debian default) it may first compact memory to find one, synchronously, on
/// the faulting thread. A replay touches a few hundred MiB of fresh memory in
/// seconds, and a chat server's tail latency feels every such stall; like
/// Redis, emosation runs with 4 KiB pages unless told otherwise
/// (`--transparent-huge-pages`). Measured in `bench/`: replay of 1,000,000
/// records took 30–40% less CPU without THP on the development VM.
pub fn disable_transparent_huge_pages() -> std::io::Result<()> {
    Ok(rustix::thread::disable_transparent_huge_pages(true)?)
}

/// Whether transparent huge pages are disabled for this process.
pub fn transparent_huge_pages_disabled() -> bool {
    rustix::thread::transparent_huge_pages_are_disabled().unwrap_or(false)
}

/// Makes every file and directory this process creates private to its
/// user (umask 077: files 0600, directories 0700). The data directory holds
/// the log, whose sign-up records carry password hashes, and the JWT secret.
pub fn private_files() {
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
}

/// Creates `dir` (and its parents) if needed and makes it private to this
/// process's user (0700), as the data directory must be whoever created it.
pub fn private_dir(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

/// Lowers the calling thread's CPU priority to the lowest (nice 19): on a
/// busy core it runs in the time the others leave, and its wake-ups do not
/// preempt them. For work that must not add to the chat path's latency
/// (analytics consumers sharing the process); it still progresses, with a
/// small share, when the core is saturated.
pub fn lower_current_thread_priority() -> std::io::Result<()> {
    // On Linux a thread id names the thread alone (POSIX would mean the process).
    let me = rustix::thread::gettid();
    Ok(rustix::process::setpriority_process(Some(me), 19)?)
}

/// Raises this process's soft limit on open files to its hard limit, as far
/// as the kernel allows, and returns the soft limit now in force (`None`:
/// unlimited). Every connection is a file descriptor; a soft limit left at
/// a login default (often 1,024) would cap a server far below what it can
/// hold.
pub fn raise_open_file_limit() -> std::io::Result<Option<u64>> {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if let (Some(current), Some(maximum)) = (limit.current, limit.maximum)
        && current < maximum
    {
        let raised = rustix::process::Rlimit {
            current: Some(maximum),
            maximum: Some(maximum),
        };
        setrlimit(Resource::Nofile, raised)?;
    }
    Ok(getrlimit(Resource::Nofile).current)
}

#[cfg(test)]
mod tests {
    #[test]
    fn huge_pages_can_be_turned_off() {
        super::disable_transparent_huge_pages().unwrap();
        assert!(super::transparent_huge_pages_disabled());
    }

    #[test]
    fn a_thread_lowers_its_own_priority_only() {
        let before = rustix::process::getpriority_process(None).unwrap();
        let lowered = std::thread::spawn(|| {
            super::lower_current_thread_priority().unwrap();
            rustix::process::getpriority_process(Some(rustix::thread::gettid())).unwrap()
        })
        .join()
        .unwrap();
        assert_eq!(lowered, 19);
        assert_eq!(
            rustix::process::getpriority_process(None).unwrap(),
            before,
            "the rest of the process keeps its priority"
        );
    }
}
