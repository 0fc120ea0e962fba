//! `egress-agent crds`: the CustomResourceDefinitions, as YAML.

use egress_agent::kubernetes::crds;

pub fn run() {
    print!("{}", crds::manifest());
}
