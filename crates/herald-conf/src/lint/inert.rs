//! Configuration warnings: see the parent module.

use crate::{diag::Diagnostics, tree::Node};

pub(super) fn check(_root: &Node, _diags: &mut Diagnostics) {}
