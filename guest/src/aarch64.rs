// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! aarch64 payloads: being ported (issue 3). Not built on x86_64 hosts.
compile_error!("the aarch64 payloads of pinvmm are not written yet (issue 3)");
