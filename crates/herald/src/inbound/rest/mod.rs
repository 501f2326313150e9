//! The REST listener: Momentum's `/v1.0/inject` and the native `/api/v1/push` batch API (momentum.md §3).
