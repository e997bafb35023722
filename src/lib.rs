//! flatstack: one cluster file to a Kubernetes cluster of Flatcar nodes on OpenStack.
//!
//! The crate is laid out as the pipeline runs: [`spec`] reads the cluster file, [`pki`]
//! keeps the cluster's trust in a local state directory, [`node`] renders each node's
//! Ignition config, and [`cli`] turns commands into calls of the others.

pub mod addons;
pub mod apply;
pub mod backup;
pub mod cli;
pub mod cloud;
pub mod image;
pub mod kube;
pub mod node;
pub mod pins;
pub mod pki;
pub mod plan;
pub mod secret;
pub mod spec;
pub mod sysext;
