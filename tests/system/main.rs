//! System tests: the real `etp` binary, real processes and files.
//! One test binary (one link step), suites by property.

mod backup;
mod bench;
mod cli_input;
mod console;
mod crash;
mod durability;
mod first_hour;
mod journal;
mod maintenance;
mod propagation;
mod readme;
mod recover;
mod recover_run;
mod refusal;
mod security;
// Kept last (not alphabetical) so it merges beside concurrent suites.
mod metrics;
