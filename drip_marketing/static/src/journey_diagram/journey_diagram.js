/** @odoo-module **/
// Draws a journey's step tree: trigger → steps (with delays and branch labels) → goal,
// each step with its live counts. Data comes from drip.journey.diagram_data.
import { Component } from "@odoo/owl";
import { _t } from "@web/core/l10n/translation";
import { registry } from "@web/core/registry";
import { standardFieldProps } from "@web/views/fields/standard_field_props";

const TYPE_ICONS = {
    send: "fa-envelope-o",
    wait: "fa-hourglass-half",
    condition: "fa-code-fork",
    split: "fa-random",
    tag_add: "fa-tag",
    tag_remove: "fa-tags",
    activity: "fa-user",
    webhook: "fa-plug",
    exit: "fa-sign-out",
};

export class JourneyDiagramNode extends Component {
    static template = "drip_marketing.JourneyDiagramNode";
    static props = { node: Object, childrenOf: Function };

    get icon() {
        return TYPE_ICONS[this.props.node.type] || "fa-circle-o";
    }

    get children() {
        return this.props.childrenOf(this.props.node.id);
    }

    get countItems() {
        const counts = this.props.node.counts || {};
        return [
            ["scheduled", _t("scheduled")],
            ["sent", _t("sent")],
            ["opened", _t("opened")],
            ["clicked", _t("clicked")],
            ["converted", _t("converted")],
        ]
            .filter(([key]) => key in counts)
            .map(([key, label]) => ({ key, label, value: counts[key] }));
    }
}
JourneyDiagramNode.components = { JourneyDiagramNode };

export class JourneyDiagram extends Component {
    static template = "drip_marketing.JourneyDiagram";
    static components = { JourneyDiagramNode };
    static props = { ...standardFieldProps };

    get data() {
        return this.props.record.data[this.props.name] || { nodes: [] };
    }

    get roots() {
        const ids = new Set(this.data.nodes.map((node) => node.id));
        return this.data.nodes.filter((node) => !node.parent_id || !ids.has(node.parent_id));
    }

    childrenOf = (id) => this.data.nodes.filter((node) => node.parent_id === id);
}

export const journeyDiagram = {
    component: JourneyDiagram,
    displayName: _t("Journey diagram"),
    supportedTypes: ["json"],
};

registry.category("fields").add("drip_journey_diagram", journeyDiagram);
