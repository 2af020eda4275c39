"""Several Envoy workers: each worker thread runs its own wasm VM, with its own object
cache, so an object is fetched at most once per worker per TTL; counters add up across
workers in Envoy's stats. (`make e2e-workers` also runs the rest of the suite with two
workers.)"""

# About the fetch on a request's path: the cache is never prewarmed here (test_ready.py
# covers prewarm, refresh and stale copies).
SVC = {"cluster": "error_pages", "timeoutMs": 1000, "cacheTtlSeconds": 300, "prewarm": False}


def test_each_worker_fetches_an_object_at_most_once_per_ttl(start_envoy, errors):
    errors.pages["/e/404.html"] = {"body": "page"}
    e = start_envoy({"errorService": SVC, "defaultCustomErrorResponsePolicy": {"errorResponseRules": [
        {"matchResponseCodes": ["404"], "path": "/e/404.html"}]}}, concurrency=2)
    # Every request on a new connection: Envoy spreads connections over its workers.
    bodies = {e.request("/status/404").body for _ in range(40)}
    assert bodies == {b"page"}
    fetches = len(errors.requests_to("/e/404.html"))
    print(f"error-service fetches for 40 errors over 2 workers: {fetches}")
    assert 1 <= fetches <= 2, f"{fetches} fetches for 2 workers"
    assert e.counter("intercepted", 40) == 40, "counters of both VMs add up"
    assert e.counter("fetched", fetches) == fetches
    assert e.counter("cache_hit", 40 - fetches) == 40 - fetches
