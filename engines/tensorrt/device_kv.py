"""KV caches that stay on the GPU between a TensorRT plan's calls.

polygraphy's TrtRunner.infer(copy_outputs_to_host=False) returns views of output buffers that it reuses, and
frees to grow, on its next call. So a decode step's `present.*` cannot be fed straight back as the next step's
`past_key_values.*`: TensorRT would write the new cache over (or free) the one it reads. A runner that takes
past caches copies its `present.*` device-to-device into buffers of its own, two per output, used on alternate
calls. What call t returned stays intact through call t+1, the one that reads it as its past. The generator needs
no more: it feeds step t's cache to step t+1 and then drops it.
"""

from polygraphy import cuda


class CacheView(cuda.DeviceView):
    """A DeviceView whose dtype reads quietly. A plain DeviceView logs a deprecation warning on every dtype
    read, and TrtRunner reads it for each input it checks: 64 lines per decode step at 7B."""

    @property
    def dtype(self):
        return self._dtype

    @dtype.setter
    def dtype(self, new):
        cuda.DeviceView.dtype.fset(self, new)


class AlternatingBuffers:
    """Per output name, two growable buffers handed out on alternate calls. A buffer grows with headroom, so a
    cache that gains one token per decode step is reallocated once in a while, not at every step."""

    def __init__(self, allocate, release, headroom: float = 1.25):
        self.allocate, self.release, self.headroom = allocate, release, headroom  # allocate(nbytes) -> buffer
        self.slots: dict[str, list] = {}  # name -> two [buffer, capacity] or None
        self.turn = 1

    def next_call(self):
        self.turn ^= 1

    def take(self, name: str, nbytes: int):
        pair = self.slots.setdefault(name, [None, None])
        held = pair[self.turn]
        if held is None or held[1] < nbytes:
            if held is not None:
                self.release(held[0])
            capacity = max(1, int(nbytes * self.headroom))  # never 0 bytes: TensorRT refuses a null address
            held = pair[self.turn] = [self.allocate(capacity), capacity]
        return held[0]

    def release_all(self):
        for pair in self.slots.values():
            for held in pair:
                if held is not None:
                    self.release(held[0])
        self.slots.clear()


class DeviceKV:
    """Keeps a runner's `present.*` device outputs in AlternatingBuffers of polygraphy DeviceArrays."""

    def __init__(self):
        self.buffers = AlternatingBuffers(lambda n: cuda.DeviceArray.raw((n,)), lambda array: array.free())

    def next_call(self):
        self.buffers.next_call()

    def keep(self, name: str, view, dtype) -> CacheView:
        """A view of `dtype` in this runner's own memory holding what `view` (a runner output) holds now."""
        array = self.buffers.take(name, view.nbytes)
        # synchronous: the copy is done before the next runner, on its own stream, reads it
        cuda.wrapper().memcpy(array.ptr, view.ptr, view.nbytes, cuda.MemcpyKind.DeviceToDevice)
        return CacheView(array.ptr, tuple(view.shape), dtype)

    def free(self):
        self.buffers.release_all()
