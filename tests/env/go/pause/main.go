// pause is the sandbox ("infra") container of the test environment's real node: it holds the
// pod's namespaces, reaps orphaned children (it is PID 1 of the pod when the PID namespace is
// shared) and exits on SIGINT/SIGTERM. Built static (CGO_ENABLED=0) by tests/env/install.sh,
// because no image can be pulled.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for s := range sigs {
		if s != syscall.SIGCHLD {
			os.Exit(0)
		}
		for {
			var status syscall.WaitStatus
			pid, err := syscall.Wait4(-1, &status, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}
