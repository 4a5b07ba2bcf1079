"""Measurement hook for bench/gc_pauses.py, loaded by the daemon through PYTHONPATH (not part of wsgw).

With MEMGC_LOG set, a twistd process logs every garbage collection (wall and thread-CPU pause, generation,
objects collected; the frozen count at full collections); SIGURG writes a census of tracked objects by type,
SIGUSR2 the cyclic garbage by type (DEBUG_SAVEALL), SIGWINCH starts tracemalloc then writes the allocation
sites of what was added per socket (MEMGC_N); MEMGC_PROFILE=1 samples the main thread's stack every 5 ms and
writes the top stacks at exit.
"""
import gc, os, signal, sys, time, collections
_LOG = os.environ.get("MEMGC_LOG")
if _LOG and "twistd" in sys.argv[0]:
    _f = open(_LOG, "a", buffering=1)
    _t = [0.0, 0.0]
    def _cb(phase, info):
        if phase == "start":
            _t[0] = time.perf_counter(); _t[1] = time.thread_time()
        else:
            _f.write(f"{time.time():.3f} gen{info['generation']} {1000*(time.perf_counter()-_t[0]):.2f} cpu={1000*(time.thread_time()-_t[1]):.2f} collected={info['collected']} frozen={gc.get_freeze_count() if info['generation'] == 2 else -1}\n")
    gc.callbacks.append(_cb)
    def _census(signum, frame):
        gc.collect()
        objs = gc.get_objects()
        c = collections.Counter(type(o).__name__ for o in objs)
        _f.write(f"CENSUS {time.time():.3f} tracked={len(objs)} frozen={gc.get_freeze_count()} blocks={sys.getallocatedblocks()}\n")
        for name, n in c.most_common(40):
            _f.write(f"  {n:8d} {name}\n")
        del objs
    def _garbage(signum, frame):
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        c = collections.Counter(type(o).__name__ for o in gc.garbage)
        _f.write(f"GARBAGE {time.time():.3f} n={len(gc.garbage)}\n")
        for name, n in c.most_common(40):
            _f.write(f"  {n:8d} {name}\n")
        gc.garbage.clear()
        gc.set_debug(0)
    signal.signal(signal.SIGURG, _census)
    signal.signal(signal.SIGUSR2, _garbage)
    import tracemalloc
    _snap = []
    def _trace(signum, frame):
        gc.collect()
        if not _snap:
            tracemalloc.start(1)
            _snap.append(tracemalloc.take_snapshot())
            _f.write("TRACE started\n")
            return
        s1 = tracemalloc.take_snapshot()
        stats = s1.compare_to(_snap[0], "lineno")
        n = int(os.environ.get("MEMGC_N", "1"))
        _f.write(f"TRACE total {sum(s.size_diff for s in stats) / n:.1f} B/conn\n")
        for st in stats[:70]:
            fr = st.traceback[0]
            _f.write(f"  {st.size_diff / n:8.1f} B/conn {st.count_diff / n:5.2f}/conn  {fr.filename.split('site-packages/')[-1]}:{fr.lineno}\n")
    signal.signal(signal.SIGWINCH, _trace)
    if os.environ.get("MEMGC_PROFILE"):
        import threading, atexit, traceback
        _main = threading.main_thread().ident
        _counts = collections.Counter()
        _total = [0]
        def _sampler():
            while True:
                time.sleep(0.005)
                fr = sys._current_frames().get(_main)
                if fr is None:
                    continue
                stack = []
                f = fr
                while f is not None and len(stack) < 6:
                    stack.append(f"{f.f_code.co_filename.split('/')[-1]}:{f.f_code.co_name}:{f.f_lineno}")
                    f = f.f_back
                _counts[" < ".join(stack)] += 1
                _total[0] += 1
        threading.Thread(target=_sampler, daemon=True).start()
        def _dump():
            _f.write(f"PROFILE samples={_total[0]}\n")
            leaf = collections.Counter()
            for k, v in _counts.items():
                leaf[k.split(" < ")[0]] += v
            for k, v in leaf.most_common(30):
                _f.write(f"  LEAF {v:6d} {k}\n")
            for k, v in _counts.most_common(25):
                _f.write(f"  {v:6d} {k}\n")
        atexit.register(_dump)
