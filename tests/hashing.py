"""A password hasher that counts how many of its checks run at once (the hashing bound)."""


class CountingHasher:
    """Checks with `real` (an argon2 PasswordHasher); `peak` is the most that ran together.
    `lock` guards the count: a real OS lock, as checks may run on real threads."""

    def __init__(self, real, lock):
        self.real, self.lock = real, lock
        self.running = self.peak = 0

    def verify(self, *args):
        with self.lock:
            self.running += 1
            self.peak = max(self.peak, self.running)
        try:
            return self.real.verify(*args)
        finally:
            with self.lock:
                self.running -= 1
