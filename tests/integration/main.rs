//! flatstack's integration tests: one binary, one module per area.

mod cli;
mod faults;
mod ignition;
mod kubeadm;
mod openstack;
mod pki;
mod proxy;
mod support;
mod up;
