// provisioner is the real node's dynamic volume provisioner (StorageClass allsource-hostpath):
// for each claim of that class it makes a directory below -dir and a hostPath PersistentVolume
// pinned to -node; Delete removes the directory. Built on the Kubernetes SIG Storage
// provisioner library, which does the watching, binding-mode handling and PV bookkeeping.
//
// It is also the class's volume resizer (the part external-resizer plays for a CSI driver): a
// bound claim of one of its volumes that asks for more than its capacity gets the new size on
// its PersistentVolume, then in its status. A hostPath directory has no size of its own, so
// nothing on disk changes; what is real is the Kubernetes side (the apiserver's resize
// admission, the claim's status, the kubelet seeing a grown volume under a running pod).
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"
	"sigs.k8s.io/sig-storage-lib-external-provisioner/v11/controller"
)

type hostPath struct {
	dir  string
	node string
}

func (p *hostPath) Provision(_ context.Context, opts controller.ProvisionOptions) (*v1.PersistentVolume, controller.ProvisioningState, error) {
	if opts.SelectedNode != nil && opts.SelectedNode.Name != p.node {
		return nil, controller.ProvisioningFinished, &controller.IgnoredError{
			Reason: fmt.Sprintf("node %s is not %s", opts.SelectedNode.Name, p.node)}
	}
	path := filepath.Join(p.dir, opts.PVName)
	if err := os.MkdirAll(path, 0o777); err != nil {
		return nil, controller.ProvisioningInBackground, err
	}
	// Pods run as any user; hostPath volumes get no fsGroup ownership change.
	if err := os.Chmod(path, 0o777); err != nil {
		return nil, controller.ProvisioningInBackground, err
	}
	reclaim := v1.PersistentVolumeReclaimDelete
	if opts.StorageClass.ReclaimPolicy != nil {
		reclaim = *opts.StorageClass.ReclaimPolicy
	}
	dirType := v1.HostPathDirectory
	pv := &v1.PersistentVolume{
		ObjectMeta: metav1.ObjectMeta{Name: opts.PVName},
		Spec: v1.PersistentVolumeSpec{
			PersistentVolumeReclaimPolicy: reclaim,
			AccessModes:                   opts.PVC.Spec.AccessModes,
			VolumeMode:                    opts.PVC.Spec.VolumeMode,
			Capacity:                      v1.ResourceList{v1.ResourceStorage: opts.PVC.Spec.Resources.Requests[v1.ResourceStorage]},
			MountOptions:                  opts.StorageClass.MountOptions,
			PersistentVolumeSource: v1.PersistentVolumeSource{
				HostPath: &v1.HostPathVolumeSource{Path: path, Type: &dirType},
			},
			NodeAffinity: &v1.VolumeNodeAffinity{Required: &v1.NodeSelector{
				NodeSelectorTerms: []v1.NodeSelectorTerm{{MatchExpressions: []v1.NodeSelectorRequirement{{
					Key: "kubernetes.io/hostname", Operator: v1.NodeSelectorOpIn, Values: []string{p.node},
				}}}},
			}},
		},
	}
	return pv, controller.ProvisioningFinished, nil
}

func (p *hostPath) Delete(_ context.Context, pv *v1.PersistentVolume) error {
	if pv.Spec.HostPath == nil || filepath.Dir(pv.Spec.HostPath.Path) != p.dir {
		return &controller.IgnoredError{Reason: "not one of ours"}
	}
	return os.RemoveAll(pv.Spec.HostPath.Path)
}

// resize gives every bound claim of one of our volumes that asks for more than its capacity
// that size, on the PersistentVolume and then in the claim's status.
func resize(ctx context.Context, client kubernetes.Interface, name, dir string) error {
	pvcs, err := client.CoreV1().PersistentVolumeClaims("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return err
	}
	for i := range pvcs.Items {
		pvc := &pvcs.Items[i]
		want, ok := pvc.Spec.Resources.Requests[v1.ResourceStorage]
		have := pvc.Status.Capacity[v1.ResourceStorage]
		if !ok || pvc.Status.Phase != v1.ClaimBound || pvc.Spec.VolumeName == "" || want.Cmp(have) <= 0 {
			continue
		}
		pv, err := client.CoreV1().PersistentVolumes().Get(ctx, pvc.Spec.VolumeName, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if pv.Annotations["pv.kubernetes.io/provisioned-by"] != name || pv.Spec.HostPath == nil ||
			filepath.Dir(pv.Spec.HostPath.Path) != dir {
			continue
		}
		if c := pv.Spec.Capacity[v1.ResourceStorage]; c.Cmp(want) < 0 {
			pv.Spec.Capacity[v1.ResourceStorage] = want.DeepCopy()
			if _, err := client.CoreV1().PersistentVolumes().Update(ctx, pv, metav1.UpdateOptions{}); err != nil {
				return err
			}
		}
		pvc.Status.Capacity = v1.ResourceList{v1.ResourceStorage: want.DeepCopy()}
		pvc.Status.AllocatedResources = v1.ResourceList{v1.ResourceStorage: want.DeepCopy()}
		pvc.Status.AllocatedResourceStatuses = nil
		kept := pvc.Status.Conditions[:0]
		for _, c := range pvc.Status.Conditions {
			if c.Type != v1.PersistentVolumeClaimResizing && c.Type != v1.PersistentVolumeClaimFileSystemResizePending {
				kept = append(kept, c)
			}
		}
		pvc.Status.Conditions = kept
		if _, err := client.CoreV1().PersistentVolumeClaims(pvc.Namespace).UpdateStatus(ctx, pvc, metav1.UpdateOptions{}); err != nil {
			return err
		}
		klog.Infof("resized %s/%s to %s", pvc.Namespace, pvc.Name, want.String())
	}
	return nil
}

func main() {
	kubeconfig := flag.String("kubeconfig", "", "kubeconfig file")
	dir := flag.String("dir", "", "directory holding the volumes")
	node := flag.String("node", "", "the node the volumes live on")
	name := flag.String("name", "allsource.io/hostpath", "provisioner name of the StorageClass")
	klog.InitFlags(nil)
	flag.Parse()
	if *kubeconfig == "" || *dir == "" || *node == "" {
		klog.Fatal("-kubeconfig, -dir and -node are required")
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", *kubeconfig)
	if err != nil {
		klog.Fatalf("kubeconfig: %v", err)
	}
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		klog.Fatalf("client: %v", err)
	}
	abs, err := filepath.Abs(*dir)
	if err != nil {
		klog.Fatalf("dir: %v", err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	go func() {
		for ctx.Err() == nil {
			if err := resize(ctx, client, *name, abs); err != nil && ctx.Err() == nil {
				klog.Warningf("resize: %v", err) // conflicts and outages: the next pass retries
			}
			select {
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
		}
	}()
	pc := controller.NewProvisionController(ctx, client, *name, &hostPath{dir: abs, node: *node},
		controller.LeaderElection(false))
	pc.Run(ctx)
}
