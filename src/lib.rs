//! qubs-bridge: integration bridge between the QUBS radiology API and hospital interface engines.
//! (The component walkthrough is written as the components land.)

pub mod hl7;
pub mod mapping;
