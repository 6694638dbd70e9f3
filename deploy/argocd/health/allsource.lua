-- Argo CD health check for the allsource.io kinds EventStore, Tenant and ArchivePolicy: the same
-- script is the value of resource.customizations.health.allsource.io_<Kind> for each kind.
-- Suspended when spec.suspend; Progressing until the operator has observed the current generation;
-- then Degraded / Healthy / Progressing from the Degraded, Ready and Progressing conditions.
local hs = {}
local kind = obj.kind or "resource"

local function condition(status, ctype)
  if status == nil or status.conditions == nil then
    return nil
  end
  for _, c in ipairs(status.conditions) do
    if c.type == ctype then
      return c
    end
  end
  return nil
end

local function describe(c, fallback)
  if c ~= nil and c.message ~= nil and c.message ~= "" then
    return c.message
  end
  if c ~= nil and c.reason ~= nil and c.reason ~= "" then
    return c.reason
  end
  return fallback
end

if obj.spec ~= nil and obj.spec.suspend == true then
  hs.status = "Suspended"
  hs.message = kind .. " is suspended (spec.suspend: true)"
  if kind == "ArchivePolicy" then
    hs.message = hs.message .. ": no archival runs"
  end
  return hs
end

local status = obj.status
local generation = obj.metadata.generation
if status == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe the " .. kind
  return hs
end
if generation ~= nil and (status.observedGeneration == nil or status.observedGeneration < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. tostring(generation)
  return hs
end

local degraded = condition(status, "Degraded")
if degraded ~= nil and degraded.status == "True" then
  hs.status = "Degraded"
  hs.message = describe(degraded, kind .. " is degraded")
  return hs
end

local ready = condition(status, "Ready")
local progressing = condition(status, "Progressing")
if ready ~= nil and ready.status == "True" and (progressing == nil or progressing.status ~= "True") then
  hs.status = "Healthy"
  hs.message = describe(ready, kind .. " is ready")
  return hs
end

hs.status = "Progressing"
if progressing ~= nil and progressing.status == "True" then
  hs.message = describe(progressing, kind .. " is being rolled out")
else
  hs.message = describe(ready, "Waiting for the " .. kind .. " to become ready")
end
if status.readyReplicas ~= nil and status.replicas ~= nil then
  hs.message = hs.message .. " (" .. tostring(status.readyReplicas) .. "/" .. tostring(status.replicas) .. " nodes ready)"
end
return hs
