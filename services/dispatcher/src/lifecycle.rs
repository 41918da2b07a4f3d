//! The life of a held task, without I/O and without reading a clock.
//!
//! [`Task`] is the state machine: one input at a time (queued, routed, an
//! agent's reply or progress, a lease or retry timer, a cancellation, a
//! write landed) at a given [`Moment`] gives a new phase and the
//! [`Effect`]s the engine carries out, in order: send an assignment, record
//! an event, set a timer, release an agent, stop an agent, dead-letter,
//! write, publish the result and acknowledge. [`Attempt`] is what one
//! attempt is waiting for; the free rules decide admission, intake, waiting
//! for an agent and what follows a failure. Every function takes the time
//! it needs, so the engine passes its clock and the tests pass whatever
//! moment they need.

mod attempt;
mod machine;
mod rules;

#[cfg(test)]
pub use attempt::lease_expired_error;
pub use machine::{Effect, GiveUp, Input, Moment, Phase, Task, Verdict, Wake};
pub use rules::{
    Admission, Arrival, NoAgent, admission, arrival, dead_letter_error, without_agent,
};

#[cfg(test)]
mod machine_tests;
#[cfg(test)]
mod tests;
