package kubetest

import "syscall"

// sysProcAttr has the kernel kill etcd and kube-apiserver when the test
// process dies (a timeout's panic, a SIGKILL), so none outlives it.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
