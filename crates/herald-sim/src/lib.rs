//! herald-sim: an APNs simulator strict enough to stand in for Apple in tests, benchmarks and staging.
//!
//! Owns the HTTP/2 provider API server, the legacy binary gateway, the feedback service, a test PKI, scenarios
//! (error rates, GOAWAY, stream limits, latency) and the statistics and delivery record tests assert on.
