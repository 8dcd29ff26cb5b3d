//! Process-wide memory settings that the embedded engines' speed depends on.

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

#[cfg(test)]
mod tests {
    #[test]
    fn huge_pages_can_be_turned_off() {
        super::disable_transparent_huge_pages().unwrap();
        assert!(super::transparent_huge_pages_disabled());
    }
}
