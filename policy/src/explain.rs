//! `palisade explain`: every tier, policy and rule the evaluator considered, in order,
//! and the one that decided. Built from the evaluator's own trace, so it cannot drift
//! from what is enforced.
