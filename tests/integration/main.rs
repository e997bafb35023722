//! flatstack's integration tests: one binary, one module per area.

mod backup;
mod bootstrap;
mod cli;
mod day_one;
mod engine;
mod etcd;
mod faults;
mod host_action;
mod ignition;
mod image;
mod kube_standin;
mod kubeadm;
mod metadata_guard;
mod node_upgrade;
mod openstack;
mod pki;
mod proxy;
mod publisher;
mod restore;
mod schemas;
mod support;
mod up;
mod upgrade;
