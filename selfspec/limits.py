"""A bound on the memory that work for untrusted input may take: rendering a chat template, encoding a text."""
import contextlib
import os


@contextlib.contextmanager
def memory_limit(extra_bytes: int):
    """Let the process's address space grow by at most `extra_bytes` in the block (RLIMIT_AS, lowered and
    raised back; Linux): allocations past it raise MemoryError instead of eating the machine's memory."""
    try:
        import resource

        with open("/proc/self/statm") as f:
            used = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    except (ImportError, OSError, ValueError):
        yield
        return
    limit = used + extra_bytes
    if (soft != resource.RLIM_INFINITY and soft <= limit) or (hard != resource.RLIM_INFINITY and hard < limit):
        yield  # already limited at least as tightly
        return
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
