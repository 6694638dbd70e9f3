// luahealth runs an Argo CD resource health check the way Argo CD does: in gopher-lua (the Lua
// 5.1 implementation Argo CD embeds), with only the libraries Argo CD opens (base, package,
// table, string, math, plus a safe os with no file or process access), and the resource as the
// global table `obj`. Usage: luahealth <script.lua> < object.json; prints the returned table as
// JSON ({"status": ..., "message": ...}) or fails with the Lua error.
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"

	lua "github.com/yuin/gopher-lua"
)

// toLua converts a decoded JSON value as Argo CD's decodeValue does: objects and arrays become
// tables (arrays 1-based), null becomes nil.
func toLua(L *lua.LState, v interface{}) lua.LValue {
	switch x := v.(type) {
	case map[string]interface{}:
		t := L.NewTable()
		for k, e := range x {
			t.RawSetString(k, toLua(L, e))
		}
		return t
	case []interface{}:
		t := L.NewTable()
		for _, e := range x {
			t.Append(toLua(L, e))
		}
		return t
	case string:
		return lua.LString(x)
	case float64:
		return lua.LNumber(x)
	case bool:
		return lua.LBool(x)
	default:
		return lua.LNil
	}
}

// fromLua converts the returned table back to JSON-able values.
func fromLua(v lua.LValue) interface{} {
	switch x := v.(type) {
	case *lua.LTable:
		m := map[string]interface{}{}
		x.ForEach(func(k, e lua.LValue) { m[k.String()] = fromLua(e) })
		return m
	case lua.LString:
		return string(x)
	case lua.LNumber:
		return float64(x)
	case lua.LBool:
		return bool(x)
	default:
		return nil
	}
}

func run() error {
	if len(os.Args) != 2 {
		return fmt.Errorf("usage: luahealth <script.lua> < object.json")
	}
	script, err := os.ReadFile(os.Args[1])
	if err != nil {
		return err
	}
	raw, err := io.ReadAll(os.Stdin)
	if err != nil {
		return err
	}
	var obj interface{}
	if err := json.Unmarshal(raw, &obj); err != nil {
		return fmt.Errorf("object: %w", err)
	}
	L := lua.NewState(lua.Options{SkipOpenLibs: true})
	defer L.Close()
	for _, lib := range []struct {
		name string
		fn   lua.LGFunction
	}{
		{lua.LoadLibName, lua.OpenPackage},
		{lua.BaseLibName, lua.OpenBase},
		{lua.TabLibName, lua.OpenTable},
		{lua.StringLibName, lua.OpenString},
		{lua.MathLibName, lua.OpenMath},
	} {
		if err := L.CallByParam(lua.P{Fn: L.NewFunction(lib.fn), NRet: 0, Protect: true}, lua.LString(lib.name)); err != nil {
			return err
		}
	}
	L.SetGlobal("obj", toLua(L, obj))
	if err := L.DoString(string(script)); err != nil {
		return err
	}
	out, err := json.Marshal(fromLua(L.Get(-1)))
	if err != nil {
		return err
	}
	fmt.Println(string(out))
	return nil
}

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "luahealth:", err)
		os.Exit(1)
	}
}
